"""Content-addressed packages: zips under blobs/, extracted trees under code/.

A zip is stored once by its sha256 and extracted once into a read-only tree
that every instance using it shares (code and dependencies alike). Every zip
is judged by the package rules (`fgd.packages`) before and while it is
extracted into a staging directory; only a package that passed is renamed
into place, so a refused or interrupted upload leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import io
import lzma
import os
import shutil
import struct
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from fgd.model import CodeRef
from fgd.packages import (
    Entry,
    InflateBudget,
    PackageLimits,
    PackageRejected,
    TreePlan,
    check_entries,
    check_symlink_target,
    show,
)

# A fixed timestamp makes inline code zips reproducible, so identical source
# gets an identical digest.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
CHUNK = 1 << 20

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


# Zips at least this large are hashed in a thread of their own while they are extracted.
PARALLEL_HASHING = 4 * 1024 * 1024


class _Abandoned(Exception):
    """Extraction stopped: the package turned out to be stored already."""


class _StoredCheck:
    """Asked between entries: is the package being extracted stored already? (Looked up once its hash is known.)"""

    def __init__(self, store: CodeStore, hashing: _Hashing) -> None:
        self._store = store
        self._hashing = hashing
        self._answer: bool | None = None

    def __call__(self) -> bool:
        if self._answer is None and self._hashing.done.is_set():
            ref = self._hashing.ref
            self._answer = ref is not None and self._store.tree_path(ref.sha256).exists()
        return bool(self._answer)


class _Hashing:
    """A zip's digests, computed in a thread of its own."""

    def __init__(self, path: Path) -> None:
        self.ref: CodeRef | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(path,), name="fgd-package-hash", daemon=True)
        self._thread.start()

    def _run(self, path: Path) -> None:
        try:
            self.ref = _digests(path)
        except BaseException as exc:  # noqa: BLE001 - handed to result()
            self.error = exc
        finally:
            self.done.set()

    def result(self) -> CodeRef:
        self._thread.join()
        if self.error is not None:
            raise self.error
        assert self.ref is not None
        return self.ref


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
        # Installing a package (rename into code/, blob into blobs/, refreshing its time) and
        # the collector's choice of what to remove exclude each other, so a package is never
        # removed between being found and being handed out.
        self._lock = threading.Lock()
        for leftover in self.tmp.glob("trash-*"):
            _remove_tree(leftover)

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
        """Validate, store and extract the zip at `path` (consumed: moved into the store or left to the caller).

        Safe to call from several threads at once, with the same zip too, and while the
        collector runs: extraction goes to a private staging tree; only the install is serialised.
        """
        staging: Path | None = None
        try:
            if path.stat().st_size < PARALLEL_HASHING:
                ref = _digests(path)
            else:
                # Hashing runs beside validation and extraction (hashlib lets go of the GIL): a
                # large upload takes the longer of the two, not their sum. A re-upload of a package
                # already stored is found once its hash is known; its extraction stops there.
                hashing = _Hashing(path)
                try:
                    staging = self._validated_tree(path, abandon=_StoredCheck(self, hashing))
                except _Abandoned:
                    pass
                except PackageRejected:
                    ref = hashing.result()
                    if not self.tree_path(ref.sha256).exists():
                        raise
                    # Refused now, yet the same bytes are stored: judged by the rules in force then.
                ref = hashing.result()
            tree = self.tree_path(ref.sha256)
            while True:
                with self._lock:
                    # The same sha256 is the same bytes: a tree already there was judged by the rules.
                    if staging is not None or tree.exists():
                        self._install(ref.sha256, path, staging)
                        return ref
                # Not there (or removed by the collector meanwhile): extract outside the lock.
                staging = self._validated_tree(path)
        finally:
            if staging is not None and staging.exists():
                _remove_tree(staging)

    def _install(self, sha256: str, path: Path, staging: Path | None) -> None:
        """Put the tree and blob in place (the lock is held) and restart their grace period."""
        tree, blob = self.tree_path(sha256), self.blob_path(sha256)
        if staging is not None and not tree.exists():
            os.rename(staging, tree)
            _sync_directory(self._trees)
        # Otherwise an identical upload got there first; the caller removes our staging copy.
        if not blob.exists():
            blob.parent.mkdir(exist_ok=True)
            os.chmod(path, 0o444)
            _sync_file(path)  # nothing left to write if the tree was just extracted (syncfs)
            os.replace(path, blob)
            # Its bytes were synced with the tree (same file system; syncfs); this makes the name last.
            _sync_directory(blob.parent)
        # A reused package may be older than the grace period: its grace period starts again,
        # so it stays until the function or dependency that asked for it is saved.
        now = time.time()
        for stored in (tree, blob):
            os.utime(stored, (now, now), follow_symlinks=False)

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

    def _validated_tree(self, path: Path, abandon: Callable[[], bool] | None = None) -> Path:
        """Judge the zip at `path` and extract it into a new staging tree (returned).

        `abandon` is asked between entries; when it says so, _Abandoned is raised (nothing left behind).
        """
        # Before zipfile reads the central directory into an object per entry (about 430 bytes
        # each: an 84 MB zip of a million empty entries took 433 MB and 7 s of the daemon's).
        limit = self.limits.max_files + self.limits.max_directories
        if _central_entries_over(path, limit):
            raise PackageRejected(f"the package has over {limit:,} entries (files and directories), the limit")
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
            # ValueError: a name flagged UTF-8 that is not (zipfile raises UnicodeDecodeError);
            # NotImplementedError: a zip version zipfile does not know.
            raise PackageRejected(f"the package is not a valid zip file (truncated or corrupt?): {exc}") from None
        with archive:
            entries = check_entries(archive.infolist(), self.limits)
            staging = Path(tempfile.mkdtemp(dir=self.tmp, prefix="tree-"))
            source = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                self._extract(archive, source, entries, staging, abandon)
            except BaseException:
                _remove_tree(staging)
                raise
            finally:
                os.close(source)
        return staging

    def _extract(
        self,
        archive: zipfile.ZipFile,
        source: int,
        entries: list[Entry],
        staging: Path,
        abandon: Callable[[], bool] | None = None,
    ) -> None:
        """Write the entries under `staging` without ever following a link.

        Every path component is opened relative to its parent's descriptor with O_NOFOLLOW
        (a link or a file where a directory is expected fails), files are created with
        O_EXCL (never opened if something is there), links with symlinkat: nothing an
        entry made, nor anything outside the tree, can be written through. The plan
        refuses the same packages earlier with a clearer message; this is the guarantee.
        """
        plan = TreePlan(self.limits.max_directories)
        budget = InflateBudget(self.limits)
        root = os.open(staging, _DIR_FLAGS)
        try:
            with _Directories(root) as directories:
                for entry, info in zip(entries, archive.infolist(), strict=True):
                    if abandon is not None and abandon():
                        raise _Abandoned
                    target = self._link_target(archive, info, entry) if entry.kind == "symlink" else ""
                    plan.add(entry, target)
                    if entry.kind == "dir":
                        directories.open(entry, entry.parts)
                        continue
                    parent = directories.open(entry, entry.parts[:-1])
                    mode = 0o555 if entry.mode & 0o111 else 0o444
                    try:
                        if entry.kind == "symlink":
                            os.symlink(target, entry.parts[-1], dir_fd=parent)
                            continue
                        # Created with its final (read-only) mode: the descriptor may still write.
                        fd = os.open(entry.parts[-1], _FILE_FLAGS, mode, dir_fd=parent)
                    except OSError as exc:
                        raise _unsafe(entry, exc) from None
                    try:
                        if info.compress_type in _DIRECT_METHODS:
                            _inflate_direct(source, info, entry, fd, budget)
                        else:
                            self._inflate(archive, info, entry, fd, budget)
                        if _UMASK & mode:
                            os.fchmod(fd, mode)  # a umask took bits away at creation
                    finally:
                        os.close(fd)
            plan.check_links()
            _chmod_directories(root, 0o555)
            # Durable before it is installed (and before the function that uses it is saved):
            # one sync of the file system instead of one per file (30,000 for a large package).
            _sync_filesystem(root)
        finally:
            os.close(root)

    @staticmethod
    def _inflate(
        archive: zipfile.ZipFile, info: zipfile.ZipInfo, entry: Entry, sink: int, budget: InflateBudget
    ) -> None:
        try:
            with archive.open(info) as source:
                written = 0
                # Most entries are small: one read of what the header declares (the budget
                # refuses more), one write, no buffered file object per entry.
                while chunk := source.read(min(CHUNK, max(entry.size, 1))):
                    budget.take(entry, written, len(chunk))
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(sink, view) :]
                    written += len(chunk)
        except zipfile.BadZipFile as exc:
            # zipfile stops at the declared size, so a header that understates it shows as a bad CRC.
            raise PackageRejected(
                f"package entry {show(entry.name)}: its data does not match its header "
                f"(a wrong declared size, or corrupt data: {exc})"
            ) from None
        except (EOFError, zlib.error, lzma.LZMAError, OSError, UnicodeDecodeError, NotImplementedError) as exc:
            # UnicodeDecodeError: the local header's name is flagged UTF-8 and is not;
            # NotImplementedError: flags zipfile cannot read (patched data, strong encryption).
            raise PackageRejected(f"package entry {show(entry.name)}: corrupt data ({exc})") from None
        budget.finish(entry, written)

    def _link_target(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, entry: Entry) -> str:
        # A link's target is a name inside the package, so it has a name's length limit.
        if info.file_size > self.limits.max_name_bytes:
            raise PackageRejected(
                f"package entry {show(entry.name)}: symbolic link target is over {self.limits.max_name_bytes} bytes"
            )
        try:
            with archive.open(info) as source:
                link = source.read(self.limits.max_name_bytes + 1).decode(errors="replace")
        except (
            zipfile.BadZipFile,
            EOFError,
            zlib.error,
            lzma.LZMAError,
            OSError,
            UnicodeDecodeError,
            NotImplementedError,
        ) as exc:
            raise PackageRejected(f"package entry {show(entry.name)}: corrupt data ({exc})") from None
        if len(link.encode()) > self.limits.max_name_bytes:
            raise PackageRejected(
                f"package entry {show(entry.name)}: symbolic link target is over {self.limits.max_name_bytes} bytes"
            )
        check_symlink_target(entry.name, entry.parts, link)
        return link

    def remove(self, sha256: str) -> None:
        with self._lock:
            doomed = self._detach(sha256)
        _remove_tree(doomed)

    def _detach(self, sha256: str) -> Path:
        """Take a package out of the store (the lock is held); the returned trash is removed after."""
        self.blob_path(sha256).unlink(missing_ok=True)
        trash = self.tmp / f"trash-{sha256}-{os.urandom(4).hex()}"
        with contextlib.suppress(FileNotFoundError):
            os.chmod(self.tree_path(sha256), 0o755)  # a directory moves to a new parent only if writable
            os.rename(self.tree_path(sha256), trash)
        return trash

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
        """Remove every blob and tree not in `in_use` and last changed (or handed out) before `older_than`.

        Read the clock for `older_than` before reading what is in use: a package handed out
        after that (its function not saved yet) is then newer than the cutoff, and kept.
        """
        with self._lock:
            removed = [sha for sha, mtime in self.stored().items() if sha not in in_use and mtime < older_than]
            trash = [self._detach(sha) for sha in removed]
        for path in trash:
            _remove_tree(path)
        return removed


_CENTRAL_HEADER = 46  # the fixed part of a central directory entry (zipfile.sizeCentralDir)

# Stored and deflated entries (nearly all) are read here, one pread of header and data for a
# small entry; zipfile's reader took three seeks, two reads and a file object per entry, a
# third of the CPU of extracting many small files. bzip2 and lzma go through zipfile.
_DIRECT_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_LOCAL_HEADER = struct.Struct(zipfile.structFileHeader)  # type: ignore[attr-defined]
# Room read past the name for the local extra field, so that header and data come in one read.
_EXTRA_ROOM = 256


def _inflate_direct(source: int, info: zipfile.ZipInfo, entry: Entry, sink: int, budget: InflateBudget) -> None:
    """Inflate a stored or deflated entry from the zip's descriptor `source` into `sink`.

    What zipfile checks, checked the same way: the local header's signature, its name equal to
    the central directory's (decoded as its own flag says), the data's CRC and length against
    the central directory; the budget refuses output past the declared size as it comes.
    """

    def corrupt(reason: str) -> PackageRejected:
        return PackageRejected(f"package entry {show(entry.name)}: corrupt data ({reason})")

    if info.flag_bits & 0x60:
        raise corrupt("patched data or strong encryption (flag bits 5 and 6) cannot be read")
    fixed = _LOCAL_HEADER.size
    offset = info.header_offset
    guess = fixed + len(info.orig_filename.encode()) + _EXTRA_ROOM
    first = os.pread(source, guess + min(info.compress_size, CHUNK), offset)
    if len(first) < fixed:
        raise corrupt("truncated local header")
    header = _LOCAL_HEADER.unpack_from(first)
    if header[0] != zipfile.stringFileHeader:  # type: ignore[attr-defined]
        raise corrupt("bad magic number for the local header")
    flags, name_length, extra_length = header[3], header[10], header[11]
    start = fixed + name_length + extra_length
    if len(first) < start:
        first += os.pread(source, start - len(first) + min(info.compress_size, CHUNK), offset + len(first))
    try:
        name = first[fixed : fixed + name_length].decode("utf-8" if flags & 0x800 else "cp437")
    except UnicodeDecodeError as exc:
        raise corrupt(str(exc)) from None
    if name != info.orig_filename:
        raise PackageRejected(
            f"package entry {show(entry.name)}: its local header names it {show(name)} (the two must agree)"
        )
    data = memoryview(first)[start : start + info.compress_size]
    position, left = offset + start + len(data), info.compress_size - len(data)
    inflater = zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
    written = crc = 0
    while True:
        pending = bytes(data)
        while pending or inflater is not None:
            if inflater is None:
                out, pending = pending, b""
            else:
                try:
                    # At most CHUNK at a time (memory stays flat however far one read inflates), and
                    # at most one byte past the declared size: enough for the budget to refuse it.
                    out = inflater.decompress(pending, min(CHUNK, max(entry.size - written, 0) + 1))
                except zlib.error as exc:
                    raise corrupt(str(exc)) from None
                pending = inflater.unconsumed_tail
                if not out and not pending:
                    break
            budget.take(entry, written, len(out))
            crc = zlib.crc32(out, crc)
            view = memoryview(out)
            while view:
                view = view[os.write(sink, view) :]
            written += len(out)
            if inflater is not None and inflater.eof and not pending:
                break  # the stream's end: nothing is held back (saves a call per entry)
        if not left:
            break
        data = memoryview(os.pread(source, min(left, CHUNK), position))
        if not data:
            raise corrupt("the archive ends inside this entry's data")
        position, left = position + len(data), left - len(data)
    if inflater is not None and not inflater.eof:
        raise corrupt("the compressed data ends before its end marker")
    budget.finish(entry, written)
    if crc != info.CRC:
        raise PackageRejected(f"package entry {show(entry.name)}: its data does not match its header (bad CRC)")


def _central_entries_over(path: Path, limit: int) -> bool:
    """Whether the zip's central directory holds more than `limit` entries, counted by walking
    its headers (nothing kept per entry). A directory that cannot be walked is left to zipfile,
    which refuses it."""
    # A large buffer: the walk's small reads and relative seeks then stay inside it (two
    # system calls per entry with the default 8 KiB were most of the store's system calls).
    with open(path, "rb", buffering=CHUNK) as handle:
        try:
            end = zipfile._EndRecData(handle)  # type: ignore[attr-defined]  # zipfile's own reader
        except OSError:
            return False
        if end is None:
            return False
        # Where zipfile looks for it too (relative to the end record: data may precede the zip).
        start = end[zipfile._ECD_LOCATION] - end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
        if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:  # type: ignore[attr-defined]
            start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator  # type: ignore[attr-defined]
        if start < 0:
            return False
        handle.seek(start)
        left, count = end[zipfile._ECD_SIZE], 0  # type: ignore[attr-defined]
        while left >= _CENTRAL_HEADER:
            fixed = handle.read(_CENTRAL_HEADER)
            if len(fixed) < _CENTRAL_HEADER or fixed[:4] != b"PK\x01\x02":
                return False
            name, extra, comment = struct.unpack_from("<3H", fixed, 28)
            handle.seek(name + extra + comment, os.SEEK_CUR)
            left -= _CENTRAL_HEADER + name + extra + comment
            count += 1
            if count > limit:
                return True
    return False


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _umask() -> int:
    """The process's umask, read without changing it (os.umask sets it, racing other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o777  # unknown: set every file's mode explicitly


_UMASK = _umask()
_libc = ctypes.CDLL(None, use_errno=True)


def _sync_filesystem(fd: int) -> None:
    """syncfs(2): write out every dirty page of the file system holding `fd`, and wait for it."""
    if _libc.syncfs(fd) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"syncfs of the package store failed: {os.strerror(error)}")


def _sync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_directory(path: Path) -> None:
    """fsync a directory, so the names just renamed into it survive a crash."""
    fd = os.open(path, _DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unsafe(entry: Entry, exc: OSError) -> PackageRejected:
    """An entry the no-follow walk refused: something an earlier entry made is in its way."""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):
        return PackageRejected(
            f"package entry {show(entry.name)}: its path runs into a symbolic link, a file or an earlier "
            f"entry ({exc.strerror}); entries may not be placed through links"
        )
    return PackageRejected(f"package entry {show(entry.name)}: cannot be extracted ({exc.strerror})")


class _Directories:
    """Directories of the staging tree as descriptors, opened one component at a time, never through a link."""

    def __init__(self, root: int) -> None:
        self._root = root
        # The directory last asked for: entries usually come grouped by directory.
        self._parts: tuple[str, ...] = ()
        self._fd = root

    def __enter__(self) -> _Directories:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._forget()

    def _forget(self) -> None:
        if self._fd != self._root:
            os.close(self._fd)
        self._parts, self._fd = (), self._root

    def open(self, entry: Entry, parts: tuple[str, ...]) -> int:
        """The descriptor of the directory at `parts`, made where missing (owned here: do not close)."""
        if parts == self._parts:
            return self._fd
        self._forget()
        fd = self._root
        try:
            for part in parts:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)  # mkdirat: never follows a link in the last component
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                if fd != self._root:
                    os.close(fd)
                fd = child
        except OSError as exc:
            if fd != self._root:
                os.close(fd)
            raise _unsafe(entry, exc) from None
        self._parts, self._fd = parts, fd
        return fd


def _chmod_directories(fd: int, mode: int) -> None:
    """Set `mode` on the directory `fd` and every directory below it, reached through descriptors.

    Links are never followed (nor even stat'ed through: a refused package's links may point anywhere).
    """
    os.fchmod(fd, mode)
    with os.scandir(fd) as entries:
        names = [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
    for name in names:
        child = os.open(name, _DIR_FLAGS, dir_fd=fd)
        try:
            _chmod_directories(child, mode)
        finally:
            os.close(child)


def _remove_tree(path: Path) -> None:
    try:
        fd = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return
    except OSError:
        fd = -1  # not a directory: rmtree removes what it can
    if fd >= 0:
        try:
            _chmod_directories(fd, 0o755)  # read-only trees: writable again so their entries can go
        except OSError:
            pass  # remove what can be removed
        finally:
            os.close(fd)
    shutil.rmtree(path, ignore_errors=True)
