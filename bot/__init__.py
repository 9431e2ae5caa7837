"""imagine-bot: generate images in Discord through a multi-provider image gateway.

The core (this package) never imports `discord` outside `bot/discord_app.py`, its adapter seam;
the cogs in `cogs/` depend on the core, never the reverse.
"""
