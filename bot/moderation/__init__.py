"""Checking prompts before anything is spent: the server's blocklist and its Discord AutoMod rules."""
