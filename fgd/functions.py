"""Function operations behind the API: create, update, replace code, delete, export."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import trio

from fgd.codestore import CodeStore, inline_zip
from fgd.dependencies import Dependencies
from fgd.destinations import check_no_cycle, targets
from fgd.errors import Conflict, InvalidParameter, NotFound
from fgd.invoker import Invoker
from fgd.logs import LogSink
from fgd.model import (
    AsyncInvokeConfig,
    CodeRef,
    CreateFunction,
    FunctionConfig,
    FunctionRecord,
    FunctionRef,
    FunctionSettings,
    UpdateCode,
    convert,
    cpu_millicores,
    function_urn,
    normalise_settings,
    settings_of,
)
from fgd.store import Store
from fgd.web.uploads import decode_inline

IMMUTABLE_FIELDS = ("func_name", "runtime", "package")


class Functions:
    def __init__(
        self,
        store: Store,
        code: CodeStore,
        invoker: Invoker,
        logs: LogSink,
        dependencies: Dependencies,
        region: str,
        runtimes: list[str],
    ) -> None:
        self._dependencies = dependencies
        # Set by the daemon once triggers exist (they need the dispatcher, which needs the invoker).
        self.triggers = None
        self._store = store
        self._logs = logs
        self.packager = dependencies.packager
        self._code = code
        self._invoker = invoker
        self.region = region
        self.runtimes = runtimes

    def get(self, ref: FunctionRef) -> FunctionRecord:
        if ref.qualifier != "latest":
            raise NotFound(f"version {ref.qualifier!r} of function {ref.package}:{ref.func_name} does not exist")
        record = self._store.get(ref.key)
        if record is None:
            raise NotFound(f"function {ref.package}:{ref.func_name} does not exist in project {ref.project_id}")
        return record

    def config(self, record: FunctionRecord) -> FunctionConfig:
        s = record.settings
        return FunctionConfig(
            func_urn=function_urn(self.region, record),
            func_name=record.func_name,
            package=record.package,
            project_id=record.project_id,
            runtime=record.runtime,
            handler=s.handler,
            memory_size=s.memory_size,
            cpu=cpu_millicores(s.memory_size),
            timeout=s.timeout,
            code_type=record.code_type,
            code_filename=record.code_filename,
            code_size=record.code.size,
            digest=record.code.sha512,
            user_data=dict(s.user_data),
            # Values of encrypted variables are never returned.
            encrypted_user_data={key: "" for key in s.encrypted_user_data},
            initializer_handler=s.initializer_handler,
            initializer_timeout=s.initializer_timeout,
            description=s.description,
            strategy_config=s.strategy_config,
            depend_version_list=list(s.depend_version_list),
            ephemeral_storage=s.ephemeral_storage,
            enable_dynamic_memory=s.enable_dynamic_memory,
            version="latest",
            last_modified=_timestamp(record.last_modified),
            reserved_instances=record.reserved,
        )

    def _check_runtime(self, runtime: str) -> None:
        if runtime not in self.runtimes:
            raise InvalidParameter(
                f"runtime {runtime!r} is not available on this node; available: {', '.join(self.runtimes)}"
            )

    async def _store_code(self, code_type: str, file_b64: str, handler: str) -> CodeRef:
        data = decode_inline("func_code.file", file_b64, self._code)
        if code_type == "inline":
            data = inline_zip(data, handler)
        return await self.packager.store_bytes(data)

    async def create(self, project_id: str, body: object) -> FunctionRecord:
        request: CreateFunction = convert(body, CreateFunction, "the function definition")
        self._check_runtime(request.runtime)
        settings = normalise_settings(settings_of(request))
        self._dependencies.resolve(project_id, request.runtime, settings.depend_version_list)
        key = (project_id, request.package, request.func_name)
        if self._store.get(key) is not None:
            raise Conflict(f"function {request.package}:{request.func_name} already exists in project {project_id}")
        code = await self._store_code(request.code_type, request.func_code.file, settings.handler)
        now = time.time()
        record = FunctionRecord(
            project_id=project_id,
            package=request.package,
            func_name=request.func_name,
            runtime=request.runtime,
            settings=settings,
            code=code,
            code_type=request.code_type,
            code_filename=request.code_filename,
            revision=1,
            created=now,
            last_modified=now,
        )
        if self._store.get(key) is not None:
            raise Conflict(f"function {request.package}:{request.func_name} already exists in project {project_id}")
        await self._store.put(record)
        return record

    async def update_config(self, record: FunctionRecord, body: object) -> FunctionRecord:
        if not isinstance(body, dict):
            raise InvalidParameter("the function config must be a JSON object")
        for field in IMMUTABLE_FIELDS:
            if field in body and body[field] != getattr(record, field):
                raise InvalidParameter(f"{field} cannot be changed; create a new function instead")
        changes = {k: v for k, v in body.items() if k not in IMMUTABLE_FIELDS}
        current = msgspec.to_builtins(record.settings)
        settings = normalise_settings(convert({**current, **changes}, FunctionSettings, "the function config"))
        self._dependencies.resolve(record.project_id, record.runtime, settings.depend_version_list)
        return await self._replace(record, settings=settings)

    async def update_code(self, record: FunctionRecord, body: object) -> FunctionRecord:
        request: UpdateCode = convert(body, UpdateCode, "the code update")
        code = await self._store_code(request.code_type, request.func_code.file, record.settings.handler)
        return await self._replace(
            record, code=code, code_type=request.code_type, code_filename=request.code_filename or record.code_filename
        )

    def reserved_running(self, record: FunctionRecord) -> int:
        return self._invoker.reserved_count(record)

    async def set_reserved(self, record: FunctionRecord, body: object) -> FunctionRecord:
        """PUT .../reservedinstances {"count": n}: keep n instances started and warm."""
        if not isinstance(body, dict) or not isinstance(body.get("count"), int) or isinstance(body["count"], bool):
            raise InvalidParameter('the body must be {"count": <number of reserved instances>}')
        count = body["count"]
        cap = record.settings.strategy_config.concurrency
        if not 0 <= count <= 1000 or (cap >= 0 and count > cap):
            raise InvalidParameter(
                f"count must be 0-1000 and at most the function's max instances "
                f"(strategy_config.concurrency = {cap}); got {count}"
            )
        current = self._current(record)
        updated = msgspec.structs.replace(current, reserved=count, last_modified=time.time())
        await self._save(updated)
        self._invoker.reserved_changed()
        return updated

    async def set_async_config(self, record: FunctionRecord, body: object) -> FunctionRecord:
        config = convert(body, AsyncInvokeConfig, "the async invoke config")
        checked = targets(self._store, record, config.destination_config, self.region)
        check_no_cycle(self._store, record, checked, self.region)
        current = self._current(record)
        updated = msgspec.structs.replace(current, async_config=config)
        await self._save(updated)
        return updated

    async def set_max_instances(self, record: FunctionRecord, body: object) -> FunctionRecord:
        """PUT .../config-max-instance {"max_instance_num": n} (FunctionGraph's shortcut)."""
        if not isinstance(body, dict) or "max_instance_num" not in body:
            raise InvalidParameter('the body must be {"max_instance_num": <-1, 0 or 1-1000>}')
        strategy = msgspec.to_builtins(record.settings.strategy_config) | {"concurrency": body["max_instance_num"]}
        return await self.update_config(record, {"strategy_config": strategy})

    async def update_code_file(self, record: FunctionRecord, path: Path, code_filename: str) -> FunctionRecord:
        """Replace the code with a zip streamed to `path` (consumed)."""
        code = await self.packager.store_file(path)
        return await self._replace(
            record, code=code, code_type="zip", code_filename=code_filename or record.code_filename
        )

    def _current(self, record: FunctionRecord) -> FunctionRecord:
        """The function as stored now: an update that took a while (an upload) must not bring back a
        function deleted meanwhile."""
        current = self._store.get(record.key)
        if current is None:
            raise NotFound(f"function {record.package}:{record.func_name} was deleted while it was being updated")
        return current

    async def _save(self, updated: FunctionRecord) -> None:
        if not await self._store.replace(updated):
            raise NotFound(f"function {updated.package}:{updated.func_name} was deleted while it was being updated")

    async def _replace(self, record: FunctionRecord, **changes: object) -> FunctionRecord:
        current = self._current(record)
        updated = msgspec.structs.replace(current, revision=current.revision + 1, last_modified=time.time(), **changes)
        await self._save(updated)
        self._invoker.retire(updated.key)
        return updated

    async def delete(self, record: FunctionRecord) -> None:
        if self.triggers is not None:
            await self.triggers.delete_all(record)
        self._logs.discard(record.key)
        # Its code stays until the collector finds nothing uses it (a busy instance may still).
        await self._store.delete(record.key)
        # Gone from the store first: requests queued behind the stopped ones then find nothing to start.
        self._invoker.stop(record.key, f"function {record.package}:{record.func_name} was deleted while it ran")

    async def export(
        self, record: FunctionRecord, *, code: bool, config: bool
    ) -> tuple[AsyncIterator[bytes], int | None]:
        """The original code zip, or a zip of `config.json` (and `code.zip`) when config is
        asked for, as chunks and the length if known in advance.

        Streamed: the package is read EXPORT_CHUNK at a time in trio's worker threads (never
        the store's), and the outer zip is written as it goes, so a large package neither sits
        in the daemon's memory nor holds a thread for seconds. The blob is opened before the
        answer starts: if the code is replaced meanwhile, this export still reads the old one.
        """
        blob = await trio.open_file(self._code.blob_path(record.code.sha256), "rb") if code else None
        if blob is not None and not config:
            return _read_chunks(blob), record.code.size
        settings = msgspec.json.format(msgspec.json.encode(self.config(record))) if config else None
        return _zip_chunks(record, settings, blob), None


EXPORT_CHUNK = 256 * 1024
# What trio.open_file returns (its class is not public).
AsyncFile = Any


async def _read_chunks(blob: AsyncFile) -> AsyncIterator[bytes]:
    async with blob:
        while chunk := await blob.read(EXPORT_CHUNK):
            yield chunk


class _Chunks(io.RawIOBase):
    """A write-only, unseekable sink: zipfile then writes entries with data descriptors, in order."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


async def _zip_chunks(record: FunctionRecord, settings: bytes | None, blob: AsyncFile | None) -> AsyncIterator[bytes]:
    sink = _Chunks()
    try:
        with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as archive:
            if settings is not None:
                archive.writestr("config.json", settings)
            if blob is not None:
                entry = zipfile.ZipInfo("code.zip", date_time=time.gmtime(record.last_modified)[:6])
                # Already compressed: stored as is, and its size known up front (zip64 if large).
                entry.compress_type = zipfile.ZIP_STORED
                entry.file_size = record.code.size
                with archive.open(entry, "w") as writer:
                    while chunk := await blob.read(EXPORT_CHUNK):
                        writer.write(chunk)
                        yield sink.take()
        yield sink.take()
    finally:
        if blob is not None:
            await blob.aclose()


def _timestamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
