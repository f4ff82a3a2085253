"""The package rules for code and dependency zips, as pure checks.

`check_entries` judges the central directory (names, counts, declared sizes,
flags, methods, ratios) before a byte is inflated; `InflateBudget` then
follows the actual inflated bytes of each entry, so a header that lies about
its size, or a bomb, is stopped as soon as it exceeds what it declared or
what the limits allow. `TreePlan` judges what the entries make together (links
followed through other links, entries placed through links). No I/O here: the
caller feeds it what it reads.
"""

from __future__ import annotations

import posixpath
import re
import stat
import unicodedata
import zipfile
from typing import Annotated

import msgspec

from fgd.errors import InvalidParameter

SUPPORTED_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}


# Hardening (issue 9): a limit of zero or less would refuse every package, or make no sense.
_AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
_AtLeastZero = Annotated[int, msgspec.Meta(ge=0)]


class PackageLimits(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Per-node limits for code and dependency packages (FunctionGraph's defaults)."""

    max_files: _AtLeastOne = 30_000
    # Directories a package makes, named by entries or implied by their paths: directory entries
    # are not files, and one 16 MB zip of empty ones made 200,000 (an inode each).
    max_directories: _AtLeastOne = 30_000
    max_bytes: _AtLeastOne = 300 * 1024 * 1024
    # Direct (base64 in JSON) uploads; larger zips are sent as a raw application/zip body.
    max_inline_zip: _AtLeastZero = 10 * 1024 * 1024
    # An entry may inflate to at most this many times its compressed size (once over 1 MiB).
    max_ratio: _AtLeastOne = 1000
    ratio_floor: _AtLeastZero = 1024 * 1024
    max_depth: _AtLeastOne = 64
    max_name_bytes: _AtLeastOne = 1024
    max_component_bytes: _AtLeastOne = 255


# Links followed in one path walk, nested ones included: the kernel's own limit (ELOOP).
MAX_LINK_HOPS = 40


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


# Control characters (NUL included) and DEL. A regular expression, not a loop over the
# characters in Python: that was a sixth of a 30,000-file package's extraction time.
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def check_name(name: str, limits: PackageLimits) -> tuple[str, ...]:
    """The path components of a safe entry name; raises for every unsafe one."""
    if _CONTROL.search(name):
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
    # Not info.is_dir(): it indexes the name's last character, and an empty name (or one that
    # starts with NUL, where zipfile cuts it) is judged below, with a message.
    files = sum(1 for info in infos if not info.filename.endswith("/"))
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


class _Node:
    """One path of the planned tree: a directory (made by an entry or implied by one), file or link."""

    __slots__ = ("children", "entry", "hops", "kind", "parent", "resolved", "target")

    def __init__(self, kind: str, parent: _Node | None, entry: str = "", target: str = "") -> None:
        self.kind = kind
        self.parent = parent
        self.entry = entry  # the archive entry that made it ("" for an implied directory)
        self.target = target
        self.children: dict[str, _Node] = {}
        # For a link, once followed: where it leads (a node, plus how many missing components
        # below it) and how many links that took (-1 while being followed: meeting it then is a loop).
        self.resolved: tuple[_Node, int] | None = None
        self.hops = 0


class TreePlan:
    """The tree an archive makes, entry by entry, judged as a whole.

    The name rules look at one entry at a time; this looks at what entries do together,
    as the kernel would resolve them. No entry may be placed through a link or under a
    file, none may replace what an earlier entry made, and every link, followed through
    the other links of the package (`check_links`, once all are known, since a later
    entry can complete an earlier link's chain), must stay inside the package: instances
    and the daemon use the stored tree, so a chain that leads out is refused even though
    extraction itself never follows a link.
    """

    def __init__(self, max_directories: int | None = None) -> None:
        self._root = _Node("dir", None)
        self._links: list[_Node] = []
        self._max_directories = max_directories
        self._directories = 0

    def _new_directory(self, name: str, parent: _Node, entry: str = "") -> _Node:
        self._directories += 1
        if self._max_directories is not None and self._directories > self._max_directories:
            raise _reject(name, f"the package makes over {self._max_directories:,} directories, the limit")
        return _Node("dir", parent, entry)

    def add(self, entry: Entry, target: str = "") -> None:
        """Place `entry` (a link with its `target`) or refuse it, naming the rule."""
        node = self._root
        for depth, part in enumerate(entry.parts[:-1], 1):
            child = node.children.get(part)
            if child is None:
                child = node.children[part] = self._new_directory(entry.name, node)
            elif child.kind == "symlink":
                raise _reject(
                    entry.name,
                    f"is inside {show('/'.join(entry.parts[:depth]))}, a symbolic link; "
                    "entries may not be placed through links",
                )
            elif child.kind == "file":
                raise _reject(entry.name, f"is inside {show('/'.join(entry.parts[:depth]))}, which is a file")
            node = child
        name = entry.parts[-1]
        existing = node.children.get(name)
        if existing is not None:
            if existing.kind == "dir" and entry.kind == "dir":
                return  # the directory an earlier entry implied, now named itself
            what = {"symlink": "symbolic link", "dir": "directory"}.get(existing.kind, existing.kind)
            made_by = f" {show(existing.entry)}" if existing.entry else " implied by earlier entries"
            raise _reject(entry.name, f"would replace the {what}{made_by} (an entry may not change what another made)")
        if entry.kind == "dir":
            child = node.children[name] = self._new_directory(entry.name, node, entry.name)
        else:
            child = node.children[name] = _Node(entry.kind, node, entry.name, target)
        if entry.kind == "symlink":
            self._links.append(child)

    def check_links(self) -> None:
        """Follow every link through the others; refuse one that leads out, loops or goes too deep."""
        for link in self._links:
            self._follow(link, link, 0)

    def _follow(self, link: _Node, origin: _Node, depth: int) -> tuple[_Node, int]:
        """Where `link` leads; refusals name `origin`, the link whose walk this is part of."""
        if link.resolved is not None:
            return link.resolved
        if link.hops < 0:
            raise _reject(origin.entry, "its symbolic links form a loop")
        if depth > MAX_LINK_HOPS:
            raise _reject(origin.entry, f"following it takes more than {MAX_LINK_HOPS} symbolic links")
        link.hops = -1  # being followed
        assert link.parent is not None
        node, missing, hops = link.parent, 0, 1
        for part in link.target.split("/"):
            if part in ("", "."):
                continue
            if missing:
                # Below a name that does not exist the kernel would stop; judging the rest
                # lexically is stricter, never looser.
                missing += 1 if part != ".." else -1
            elif part == "..":
                if node.parent is None:
                    raise _reject(
                        origin.entry,
                        f"symbolic link to {show(origin.target)} leads outside the package "
                        "(followed through the package's other links)",
                    )
                node = node.parent
            elif (child := node.children.get(part)) is None:
                missing = 1
            elif child.kind == "symlink":
                node, missing = self._follow(child, origin, depth + 1)
                hops += child.hops
            else:
                node = child
            if hops > MAX_LINK_HOPS:
                raise _reject(origin.entry, f"following it takes more than {MAX_LINK_HOPS} symbolic links")
        link.hops = hops
        link.resolved = (node, missing)
        return link.resolved
