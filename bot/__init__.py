"""imagine-bot: generate images in Discord through a multi-provider image gateway.

The core (this package) never imports `discord` outside `bot/discord_app.py`, its adapter seam;
the cogs in `cogs/` depend on the core, never the reverse.
"""

from importlib import metadata as _metadata

try:
    BOT_VERSION = _metadata.version("imagine-bot")  # recorded in each process's heartbeat
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    BOT_VERSION = "0+unknown"
