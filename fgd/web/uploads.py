"""Getting package zips in: base64 inside JSON, or a raw streamed application/zip body.

A raw body is written to a staging file as it arrives, so the daemon's memory
stays flat whatever the package size; the package rules are applied to the
file, in a worker thread, before it is moved into the store.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import AsyncIterable, Callable
from pathlib import Path
from typing import TypeVar

import trio

from fgd.codestore import CodeStore
from fgd.errors import InvalidParameter, TooLarge
from fgd.model import CodeRef

T = TypeVar("T")
ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/octet-stream")


def is_raw_zip(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() in ZIP_TYPES


def raw_limit(code: CodeStore) -> int:
    """Largest raw zip accepted: the inflated limit plus room for the zip's own headers."""
    return code.limits.max_bytes + code.limits.max_bytes // 10 + 1024 * 1024


def decode_inline(field: str, value: str, code: CodeStore) -> bytes:
    limit = code.limits.max_inline_zip
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParameter(f"{field} must be base64") from None
    if len(data) > limit:
        raise TooLarge(
            f"{field} holds {len(data):,} bytes of zip, over the {limit:,} allowed inline; upload larger "
            "packages as a raw body with Content-Type: application/zip"
        )
    return data


async def receive_to_file(chunks: AsyncIterable[bytes], code: CodeStore) -> Path:
    """Stream a request body into a staging file; the caller owns (and removes) the file."""
    limit = raw_limit(code)
    fd, path = code.temp_file()
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"the zip is over {limit:,} bytes; packages may inflate to {code.limits.max_bytes:,}")
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        if size == 0:
            raise InvalidParameter("the request body is empty; send the zip file")
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return path


class Packager:
    """Runs package validation and extraction off the event loop, a few at a time."""

    def __init__(self, code: CodeStore) -> None:
        self.code = code
        self._limiter = trio.CapacityLimiter(2)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def store_bytes(self, data: bytes) -> CodeRef:
        return await self.run(self.code.put, data)

    async def store_file(self, path: Path) -> CodeRef:
        try:
            return await self.run(self.code.put_file, path)
        finally:
            path.unlink(missing_ok=True)
