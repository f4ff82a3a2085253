"""Content-addressed code packages: zips under blobs/, extracted trees under code/.

A zip is stored once by its sha256 and extracted once into a read-only tree
that every instance of every function using it shares. Writes go to a
temporary name first and are renamed into place, so a crash never leaves a
half-written blob or tree under its final name.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from fgd.errors import InvalidParameter
from fgd.model import CodeRef

# A fixed timestamp makes inline code zips reproducible, so identical source
# gets an identical digest.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class PackageRejected(InvalidParameter):
    """A code package broke a package rule; the message names the entry."""


def inline_zip(source: bytes, handler: str) -> bytes:
    """Wrap one source file into a zip named after the handler's module."""
    module_path = handler.rpartition(".")[0]
    info = zipfile.ZipInfo(f"{module_path}.py", date_time=_ZIP_EPOCH)
    info.external_attr = 0o644 << 16
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(info, source)
    return buffer.getvalue()


def show(name: str) -> str:
    """An entry name quoted for a message, with control characters made visible."""
    return "'" + "".join(c if c.isprintable() else repr(c)[1:-1] for c in name) + "'"


def check_entry_name(name: str) -> PurePosixPath:
    """Refuse names that would land outside the package's directory."""
    if "\\" in name:
        raise PackageRejected(f"package entry {show(name)}: backslashes are not allowed in file names")
    if name.startswith("/"):
        raise PackageRejected(f"package entry {show(name)}: absolute paths are not allowed")
    path = PurePosixPath(name)
    if ".." in path.parts:
        raise PackageRejected(f"package entry {show(name)}: '..' components are not allowed")
    return path


class CodeStore:
    def __init__(self, state_dir: Path) -> None:
        self._blobs = state_dir / "blobs" / "sha256"
        self._trees = state_dir / "code"
        self._tmp = state_dir / "tmp"
        for directory in (self._blobs, self._trees, self._tmp):
            directory.mkdir(parents=True, exist_ok=True)

    def blob_path(self, sha256: str) -> Path:
        return self._blobs / sha256[:2] / sha256

    def tree_path(self, sha256: str) -> Path:
        return self._trees / sha256

    def put(self, data: bytes) -> CodeRef:
        """Validate, store and extract a zip; idempotent for identical bytes."""
        ref = CodeRef(hashlib.sha256(data).hexdigest(), hashlib.sha512(data).hexdigest(), len(data))
        blob = self.blob_path(ref.sha256)
        tree = self.tree_path(ref.sha256)
        if blob.exists() and tree.exists():
            return ref
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile as exc:
            raise PackageRejected(f"the code package is not a valid zip file: {exc}") from None
        with archive:
            members = [(check_entry_name(info.filename), info) for info in archive.infolist()]
            if not tree.exists():
                self._extract(archive, members, tree)
        if not blob.exists():
            blob.parent.mkdir(exist_ok=True)
            self._write_atomically(blob, data)
        return ref

    def read(self, ref: CodeRef) -> bytes:
        return self.blob_path(ref.sha256).read_bytes()

    def _write_atomically(self, target: Path, data: bytes) -> None:
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp_name, 0o444)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def _extract(self, archive: zipfile.ZipFile, members: list, tree: Path) -> None:
        staging = Path(tempfile.mkdtemp(dir=self._tmp, prefix="tree-"))
        try:
            for path, info in members:
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise PackageRejected(f"package entry {show(info.filename)}: symbolic links are not allowed yet")
                target = staging.joinpath(*path.parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
                mode = (info.external_attr >> 16) & 0o777
                os.chmod(target, 0o555 if mode & 0o111 else 0o444)
            for directory, _dirs, _files in os.walk(staging):
                os.chmod(directory, 0o555)
            os.rename(staging, tree)
        except BaseException:
            _remove_tree(staging)
            raise

    def remove(self, sha256: str) -> None:
        self.blob_path(sha256).unlink(missing_ok=True)
        _remove_tree(self.tree_path(sha256))


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    for directory, _dirs, _files in os.walk(path):
        os.chmod(directory, 0o755)
    shutil.rmtree(path, ignore_errors=True)
