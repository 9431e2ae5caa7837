"""Discord adapters: slash commands, buttons, and how jobs are shown. They depend on `bot`, never the reverse."""
