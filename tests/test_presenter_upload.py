"""The upload path's streams: closed after the upload, so no request object keeps an image alive."""

from __future__ import annotations

import os

import discord

from bot.generation.images import SharedBytesIO
from cogs.presenter import _close_files, _upload_file


def test_upload_files_are_closed_after_the_upload(tmp_path: os.PathLike[str]) -> None:
    in_memory = SharedBytesIO(os.urandom(1000))
    path = os.path.join(tmp_path, "image.png")
    with open(path, "wb") as file:
        file.write(b"x" * 1000)
    files = [discord.File(in_memory, filename="1.png"), _upload_file(b"re-encoded", "2.webp")]
    files.append(discord.File(path, filename="3.png"))
    _close_files(files)
    assert all(file.fp.closed for file in files)
    assert in_memory.closed and in_memory._shared == b""
