"""Builders of hostile and edge-case zips, made by the tests (no binaries are committed)."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import warnings
import zipfile
import zlib
from pathlib import Path


def zip_bytes(entries: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def with_raw_name(name: str) -> bytes:
    """A zip whose entry name is written as given (zipfile would not write some names itself)."""
    placeholder = "P" * len(name.encode())
    data = zip_bytes([("index.py", b"x = 1\n"), (placeholder, b"data")])
    return data.replace(placeholder.encode(), name.encode())


def symlink(name: str, target: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.py", "x = 1\n")
        info = zipfile.ZipInfo(name)
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, target)
    return buffer.getvalue()


def device(name: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo(name)
        info.create_system = 3
        info.external_attr = (stat.S_IFCHR | 0o666) << 16
        archive.writestr(info, b"")
    return buffer.getvalue()


def encrypted(name: str) -> bytes:
    """A zip whose entry has the 'encrypted' flag set (traditional PKWARE encryption)."""
    data = zip_bytes([(name, b"secret")], zipfile.ZIP_STORED)
    # Set bit 0 of the general-purpose flags in the local header and the central directory.
    data = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = data.find(signature)
        flags = struct.unpack_from("<H", data, start + offset)[0]
        struct.pack_into("<H", data, start + offset, flags | 1)
    return bytes(data)


def lying_size(name: str, real: int, declared: int) -> bytes:
    """An entry whose central directory (and local header) declare `declared` bytes; it inflates to `real`."""
    data = bytearray(zip_bytes([(name, b"a" * real)]))
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = data.find(signature)
        struct.pack_into("<I", data, start + offset, declared)
    return bytes(data)


def truncated() -> bytes:
    data = zip_bytes([("index.py", b"x = 1\n" * 1000), ("more.py", os.urandom(5000))])
    return data[: len(data) // 2]


def bomb(path: Path, inflated: int, declared: int | None = None) -> None:
    """One entry of `inflated` zeros as a deflate stream (about 1,000:1), in a zip64 archive whose
    headers declare `declared` bytes (default: the truth). Built by hand: writing 10 GB through
    zlib would take the test far longer than refusing it should."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(b"\0" * (1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.flush(zlib.Z_FINISH)
    repeats = inflated // (1 << 20)
    compressed = len(block) * repeats + len(tail)
    size = inflated if declared is None else declared
    name = b"bomb.bin"
    crc = 0  # never reached: the package is refused before the end of the data
    local_extra = struct.pack("<HHQQ", 1, 16, size, compressed)
    local = (
        struct.pack(
            "<4sHHHHHIIIHH", b"PK\x03\x04", 45, 0, 8, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(name), len(local_extra)
        )
        + name
        + local_extra
    )
    with open(path, "wb") as out:
        out.write(local)
        for _ in range(repeats):
            out.write(block)
        out.write(tail)
        directory_at = out.tell()
        central_extra = struct.pack("<HHQQQ", 1, 24, size, compressed, 0)
        central = (
            struct.pack(
                "<4sHHHHHHIIIHHHHHII",
                b"PK\x01\x02",
                45,
                45,
                0,
                8,
                0,
                0x21,
                crc,
                0xFFFFFFFF,
                0xFFFFFFFF,
                len(name),
                len(central_extra),
                0,
                0,
                0,
                0,
                0xFFFFFFFF,
            )
            + name
            + central_extra
        )
        out.write(central)
        zip64_at = out.tell()
        out.write(struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, 1, 1, len(central), directory_at))
        out.write(struct.pack("<4sIQI", b"PK\x06\x07", 0, zip64_at, 1))
        out.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, 0xFFFFFFFF, 0xFFFFFFFF, 0))


def many_files(path: Path, count: int) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("index.py", "def handler(e, c):\n    return 'many'\n")
        for i in range(count - 1):
            archive.writestr(f"d{i // 1000}/f{i}.txt", b"")


def sized(path: Path, total: int, files: int = 3) -> None:
    """A zip that inflates to exactly `total` bytes over `files` files (half random, half zeros)."""
    seed = os.urandom(1 << 20)
    handler = b"def handler(e, c):\n    return 'sized'\n"
    remaining = total - len(handler)
    per_file = remaining // (files - 1)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("index.py", handler)
        for i in range(files - 1):
            size = per_file if i < files - 2 else remaining - per_file * (files - 2)
            with archive.open(f"blob{i}.bin", "w", force_zip64=True) as sink:
                written = 0
                while written < size:
                    n = min(len(seed), size - written)
                    sink.write(seed[: n // 2] + b"\0" * (n - n // 2))
                    written += n


# Link chains ------------------------------------------------------------------------------
#
# A package is a list of items: (name, bytes) for a file, `Link(name, target)` for a symbolic
# link, `Dir(name)` for an explicit directory entry, written in that order.


class Link:
    def __init__(self, name: str, target: str) -> None:
        self.name, self.target = name, target


class Dir:
    def __init__(self, name: str) -> None:
        self.name = name.rstrip("/") + "/"


def package(items: list, handler: bytes = b"def handler(e, c):\n    return 'ok'\n") -> bytes:
    """A zip with index.py first, then `items` in order (duplicates written as asked)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicates some cases are made of
        archive.writestr("index.py", handler)
        for item in items:
            if isinstance(item, Link):
                info = zipfile.ZipInfo(item.name)
                info.create_system = 3
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                archive.writestr(info, item.target)
            elif isinstance(item, Dir):
                info = zipfile.ZipInfo(item.name)
                info.create_system = 3
                info.external_attr = (stat.S_IFDIR | 0o755) << 16
                archive.writestr(info, b"")
            else:
                archive.writestr(item[0], item[1])
    return buffer.getvalue()


# Deep enough that its links climb from any staging tree up to "/" (extra '..' stay at "/").
CLIMB = 40


def climb(directory: str, file_name: str, data: bytes = b"pwned\n") -> list:
    """Items whose naive extraction writes `directory`/`file_name` (an absolute path) through links.

    Every link passes the lexical check: `d/.../d/u -> ../...` is the package root, and
    `w -> d/.../d/u/../.../<directory>` normalises to `d/<directory>`, yet the kernel takes
    it from the root CLIMB levels up, to "/", then down to `directory`.
    """
    deep = "/".join(["d"] * CLIMB)
    up = "/".join([".."] * CLIMB)
    return [
        Link(f"{deep}/u", up),
        Link("w", f"{deep}/u/{up}/{directory.strip('/')}"),
        (f"w/{file_name}", data),
    ]


# The exploit as found: `l` normalises to ".", the kernel takes it two levels above the
# staging tree (the state dir, next to admin.token and fgd.db), and l/X is written there.
EXPLOIT = [Link("s/u", ".."), Link("l", "s/u/../.."), ("l/X", b"pwned\n")]

# Hostile packages by the rule they break: (items, words the refusal must contain).
LINK_CASES: dict[str, tuple[list, list[str]]] = {
    "exploit": (EXPLOIT, ["'l/X'", "symbolic link"]),
    "exploit-link-alone": (EXPLOIT[:2], ["'l'", "leads outside the package"]),
    "link-to-link": (
        [Link("s/u", ".."), Link("s/v", "u"), Link("l", "s/v/../.."), ("l/X", b"x")],
        ["'l/X'", "symbolic link"],
    ),
    "link-to-link-alone": ([Link("s/u", ".."), Link("s/v", "u"), Link("l", "s/v/../..")], ["'l'", "outside"]),
    "chain-completed-later": ([Link("a/l", "d/../.."), Link("a/d", ".")], ["'a/l'", "outside"]),
    "loop": ([Link("a", "b"), Link("b", "a")], ["'a'", "loop"]),
    "too-many-hops": (
        [Link(f"l{i}", f"l{i + 1}") for i in range(45)] + [("l45", b"x")],
        ["'l0'", "more than 40 symbolic links"],
    ),
    "link-then-dir-of-same-name": ([Link("l", "real"), Dir("real"), Dir("l")], ["'l/'", "duplicate of 'l'"]),
    "link-then-dir-inside-it": ([Dir("real"), Link("l", "real"), Dir("l/sub")], ["'l/sub/'", "symbolic link"]),
    "file-under-a-link": ([Dir("real"), Link("l", "real"), ("l/f.py", b"x")], ["'l/f.py'", "symbolic link"]),
    "file-under-a-file": ([("f", b"x"), ("f/g.py", b"x")], ["'f/g.py'", "is a file"]),
    "duplicate-second-is-link": ([("x.py", b"x"), Link("x.py", "index.py")], ["'x.py'", "duplicate"]),
    "link-replaces-implied-dir": ([("a/b.py", b"x"), Link("a", "index.py")], ["'a'", "would replace"]),
    "link-at-file-later-written": (
        [Link("s/u", ".."), Link("l", "s/u/../../victim"), ("l", b"truncated!\n")],
        ["'l'", "duplicate"],
    ),
    "link-at-file-later-written-alone": (
        [Link("s/u", ".."), Link("l", "s/u/../../victim"), ("victim", b"x")],
        ["'l'", "outside"],
    ),
}


def listing(root: Path, skip: tuple[str, ...] = (), volatile: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Every path under `root` (relative) with its kind, mode, size, mtime and content digest or link target.

    Paths under `skip` are left out; for names in `volatile` only their presence counts.
    """
    found: dict[str, tuple] = {}
    for directory, dirs, files in os.walk(root):
        relative_dir = os.path.relpath(directory, root)
        dirs[:] = [d for d in dirs if os.path.normpath(os.path.join(relative_dir, d)) not in skip]
        for name in dirs + files:
            path = os.path.join(directory, name)
            relative = os.path.normpath(os.path.join(relative_dir, name))
            info = os.lstat(path)
            if name in volatile:
                found[relative] = ("present",)
            elif stat.S_ISLNK(info.st_mode):
                found[relative] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[relative] = ("dir", stat.S_IMODE(info.st_mode))
            else:
                # Small files by content too (an overwrite could keep size and restore the mtime);
                # a big stored package by size and mtime, so a listing stays quick.
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest() if info.st_size < 1 << 20 else ""
                found[relative] = ("file", info.st_size, info.st_mtime_ns, stat.S_IMODE(info.st_mode), digest)
    return found
