"""The package rules for code and dependency zips, as pure checks.

`check_entries` judges the central directory (names, counts, declared sizes,
flags, methods, ratios) before a byte is inflated; `InflateBudget` then
follows the actual inflated bytes of each entry, so a header that lies about
its size, or a bomb, is stopped as soon as it exceeds what it declared or
what the limits allow. No I/O here: the caller feeds it what it reads.
"""

from __future__ import annotations

import posixpath
import stat
import unicodedata
import zipfile

import msgspec

from fgd.errors import InvalidParameter

SUPPORTED_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}


class PackageLimits(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Per-node limits for code and dependency packages (FunctionGraph's defaults)."""

    max_files: int = 30_000
    max_bytes: int = 300 * 1024 * 1024
    # Direct (base64 in JSON) uploads; larger zips are sent as a raw application/zip body.
    max_inline_zip: int = 10 * 1024 * 1024
    # An entry may inflate to at most this many times its compressed size (once over 1 MiB).
    max_ratio: int = 1000
    ratio_floor: int = 1024 * 1024
    max_depth: int = 64
    max_name_bytes: int = 1024
    max_component_bytes: int = 255


class PackageRejected(InvalidParameter):
    """A package broke a rule; the message names the entry and the rule."""


class Entry(msgspec.Struct, frozen=True):
    """One accepted entry, as the extractor needs it."""

    name: str
    parts: tuple[str, ...]
    kind: str  # "file", "dir" or "symlink"
    size: int
    compressed: int
    mode: int


def show(name: str) -> str:
    """An entry name quoted for a message, with control characters made visible."""
    return "'" + "".join(c if c.isprintable() else repr(c)[1:-1] for c in name) + "'"


def _reject(name: str, rule: str) -> PackageRejected:
    return PackageRejected(f"package entry {show(name)}: {rule}")


def check_name(name: str, limits: PackageLimits) -> tuple[str, ...]:
    """The path components of a safe entry name; raises for every unsafe one."""
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise _reject(name, "control characters (including NUL) are not allowed in names")
    if "\\" in name:
        raise _reject(name, "backslashes are not allowed in names")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise _reject(name, "absolute paths are not allowed")
    if len(name.encode()) > limits.max_name_bytes:
        raise _reject(name, f"the name is over {limits.max_name_bytes} bytes")
    parts = tuple(part for part in name.rstrip("/").split("/") if part not in ("", "."))
    if ".." in parts:
        raise _reject(name, "'..' components are not allowed")
    if not parts:
        raise _reject(name, "the name is empty")
    if any(len(part.encode()) > limits.max_component_bytes for part in parts):
        raise _reject(name, f"a path component is over {limits.max_component_bytes} bytes")
    if len(parts) > limits.max_depth:
        raise _reject(name, f"nested {len(parts)} levels deep; the limit is {limits.max_depth}")
    if parts[-1].endswith("~"):
        raise _reject(name, "file names ending in '~' are not allowed")
    return parts


def unix_mode(info: zipfile.ZipInfo) -> int:
    """The Unix mode bits, when the zip was made on Unix (elsewhere the field means something else)."""
    return info.external_attr >> 16 if info.create_system == 3 else 0


def _kind(info: zipfile.ZipInfo) -> str:
    kind = stat.S_IFMT(unix_mode(info))
    if info.is_dir() or kind == stat.S_IFDIR:
        return "dir"
    # Many tools (Python's writestr among them) set permission bits without a file type.
    if kind in (0, stat.S_IFREG):
        return "file"
    if kind == stat.S_IFLNK:
        return "symlink"
    raise _reject(info.filename, "device, fifo and socket entries are not allowed")


def check_symlink_target(name: str, parts: tuple[str, ...], target: str) -> None:
    """A link may point only inside the package, by a relative path."""
    if not target or target.startswith("/") or "\\" in target or "\0" in target:
        raise _reject(name, f"symbolic link to {show(target)} points outside the package")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname("/".join(parts)), target))
    if resolved == ".." or resolved.startswith("../") or resolved.startswith("/"):
        raise _reject(name, f"symbolic link to {show(target)} points outside the package")


def check_entries(infos: list[zipfile.ZipInfo], limits: PackageLimits) -> list[Entry]:
    """Judge the central directory; return the entries to extract, in order."""
    files = sum(1 for info in infos if not info.is_dir())
    if files > limits.max_files:
        raise PackageRejected(f"the package has {files:,} files; the limit is {limits.max_files:,}")
    seen: dict[str, str] = {}
    declared = 0
    entries = []
    for info in infos:
        # zipfile cuts a name at its first NUL; judge the name as it is in the archive.
        name = info.orig_filename
        parts = check_name(name, limits)
        key = unicodedata.normalize("NFC", "/".join(parts)).casefold()
        if key in seen:
            raise _reject(name, f"duplicate of {show(seen[key])} (names may not differ only in case or form)")
        seen[key] = name
        if info.flag_bits & 0x1:
            raise _reject(name, "encrypted entries are not allowed")
        if info.compress_type not in SUPPORTED_METHODS:
            raise _reject(
                name, f"compression method {info.compress_type} is not supported (stored, deflate, bzip2, lzma)"
            )
        kind = _kind(info)
        declared += info.file_size
        if declared > limits.max_bytes:
            raise _reject(name, f"the package inflates to over {limits.max_bytes:,} bytes, the limit")
        if info.file_size > limits.ratio_floor and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise _reject(
                name,
                f"compression ratio {info.file_size // max(info.compress_size, 1)}:1 is over "
                f"{limits.max_ratio}:1 (a zip bomb?)",
            )
        entries.append(Entry(name, parts, kind, info.file_size, info.compress_size, unix_mode(info)))
    return entries


class InflateBudget:
    """Counts the bytes actually inflated, against each entry's declared size and the package limit."""

    def __init__(self, limits: PackageLimits) -> None:
        self._limits = limits
        self.total = 0

    def take(self, entry: Entry, written: int, chunk: int) -> None:
        """Account `chunk` more bytes of `entry`, of which `written` were already inflated."""
        if written + chunk > entry.size:
            raise _reject(entry.name, f"inflates to more than the {entry.size:,} bytes its header declares")
        self.total += chunk
        if self.total > self._limits.max_bytes:
            raise _reject(entry.name, f"the package inflates to over {self._limits.max_bytes:,} bytes, the limit")

    def finish(self, entry: Entry, written: int) -> None:
        if written != entry.size:
            raise _reject(entry.name, f"inflates to {written:,} bytes, not the {entry.size:,} its header declares")
