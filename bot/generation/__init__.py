"""Generating images: the model catalog, the gateway client, its poll schedule, and the image pipeline."""
