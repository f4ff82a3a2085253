"""Content-addressed packages: zips under blobs/, extracted trees under code/.

A zip is stored once by its sha256 and extracted once into a read-only tree
that every instance using it shares (code and dependencies alike). Every zip
is judged by the package rules (`fgd.packages`) before and while it is
extracted into a staging directory; only a package that passed is renamed
into place, so a refused or interrupted upload leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import lzma
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path

from fgd.model import CodeRef
from fgd.packages import (
    Entry,
    InflateBudget,
    PackageLimits,
    PackageRejected,
    check_entries,
    check_symlink_target,
    show,
)

# A fixed timestamp makes inline code zips reproducible, so identical source
# gets an identical digest.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
CHUNK = 1 << 20
MAX_LINK_TARGET = 4096

__all__ = ["CodeStore", "PackageRejected", "inline_zip"]


def inline_zip(source: bytes, handler: str) -> bytes:
    """Wrap one source file into a zip named after the handler's module."""
    module_path = handler.rpartition(".")[0]
    info = zipfile.ZipInfo(f"{module_path}.py", date_time=_ZIP_EPOCH)
    info.external_attr = 0o644 << 16
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(info, source)
    return buffer.getvalue()


def _digests(path: Path) -> CodeRef:
    sha256, sha512 = hashlib.sha256(), hashlib.sha512()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            sha256.update(chunk)
            sha512.update(chunk)
            size += len(chunk)
    return CodeRef(sha256.hexdigest(), sha512.hexdigest(), size)


class CodeStore:
    def __init__(self, state_dir: Path, limits: PackageLimits | None = None) -> None:
        self.limits = limits or PackageLimits()
        self._blobs = state_dir / "blobs" / "sha256"
        self._trees = state_dir / "code"
        self.tmp = state_dir / "tmp"
        for directory in (self._blobs, self._trees, self.tmp):
            directory.mkdir(parents=True, exist_ok=True)

    def blob_path(self, sha256: str) -> Path:
        return self._blobs / sha256[:2] / sha256

    def tree_path(self, sha256: str) -> Path:
        return self._trees / sha256

    def temp_file(self) -> tuple[int, Path]:
        """A new file in the store's staging area (same filesystem, so it can be renamed in)."""
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix="upload-")
        return fd, Path(name)

    def put(self, data: bytes) -> CodeRef:
        """Validate, store and extract a zip held in memory."""
        fd, path = self.temp_file()
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            return self.put_file(path)
        finally:
            path.unlink(missing_ok=True)

    def put_file(self, path: Path) -> CodeRef:
        """Validate, store and extract the zip at `path` (consumed: moved into the store or left to the caller)."""
        ref = _digests(path)
        blob = self.blob_path(ref.sha256)
        tree = self.tree_path(ref.sha256)
        if blob.exists() and tree.exists():
            return ref
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise PackageRejected(f"the package is not a valid zip file (truncated or corrupt?): {exc}") from None
        with archive:
            entries = check_entries(archive.infolist(), self.limits)
            if not tree.exists():
                self._extract(archive, entries, tree)
        if not blob.exists():
            blob.parent.mkdir(exist_ok=True)
            os.chmod(path, 0o444)
            os.replace(path, blob)
        return ref

    def put_file_copy(self, source: Path) -> CodeRef:
        """Validate, store and extract a zip the caller keeps (e.g. an operator's file)."""
        fd, path = self.temp_file()
        try:
            with open(source, "rb") as reader, os.fdopen(fd, "wb") as writer:
                shutil.copyfileobj(reader, writer, CHUNK)
            return self.put_file(path)
        finally:
            path.unlink(missing_ok=True)

    def read(self, ref: CodeRef) -> bytes:
        return self.blob_path(ref.sha256).read_bytes()

    def _extract(self, archive: zipfile.ZipFile, entries: list[Entry], tree: Path) -> None:
        staging = Path(tempfile.mkdtemp(dir=self.tmp, prefix="tree-"))
        budget = InflateBudget(self.limits)
        try:
            for entry, info in zip(entries, archive.infolist(), strict=True):
                target = staging.joinpath(*entry.parts)
                if entry.kind == "dir":
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                if entry.kind == "symlink":
                    self._link(archive, info, entry, target)
                    continue
                try:
                    with archive.open(info) as source, open(target, "wb") as sink:
                        written = 0
                        while chunk := source.read(CHUNK):
                            budget.take(entry, written, len(chunk))
                            sink.write(chunk)
                            written += len(chunk)
                except zipfile.BadZipFile as exc:
                    # zipfile stops at the declared size, so a header that understates it shows as a bad CRC.
                    raise PackageRejected(
                        f"package entry {show(entry.name)}: its data does not match its header "
                        f"(a wrong declared size, or corrupt data: {exc})"
                    ) from None
                except (EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
                    raise PackageRejected(f"package entry {show(entry.name)}: corrupt data ({exc})") from None
                budget.finish(entry, written)
                os.chmod(target, 0o555 if entry.mode & 0o111 else 0o444)
            for directory, _dirs, _files in os.walk(staging):
                os.chmod(directory, 0o555)
            os.rename(staging, tree)
        except BaseException:
            _remove_tree(staging)
            raise

    def _link(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, entry: Entry, target: Path) -> None:
        if info.file_size > MAX_LINK_TARGET:
            raise PackageRejected(f"package entry {show(entry.name)}: symbolic link target is too long")
        link = archive.read(info).decode(errors="replace")
        check_symlink_target(entry.name, entry.parts, link)
        os.symlink(link, target)

    def remove(self, sha256: str) -> None:
        self.blob_path(sha256).unlink(missing_ok=True)
        _remove_tree(self.tree_path(sha256))

    def stored(self) -> dict[str, float]:
        """Every stored blob or tree by sha256, with its newest modification time."""
        found: dict[str, float] = {}
        paths = list(self._trees.iterdir())
        for bucket in self._blobs.iterdir():
            paths += bucket.iterdir()
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                found[path.name] = max(found.get(path.name, 0.0), path.lstat().st_mtime)
        return found

    def collect(self, in_use: set[str], older_than: float) -> list[str]:
        """Remove every blob and tree not in `in_use` and last changed before `older_than`."""
        removed = [sha for sha, mtime in self.stored().items() if sha not in in_use and mtime < older_than]
        for sha in removed:
            self.remove(sha)
        return removed


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    for directory, _dirs, _files in os.walk(path):
        os.chmod(directory, 0o755)
    shutil.rmtree(path, ignore_errors=True)
