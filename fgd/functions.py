"""Function operations behind the API: create, update, replace code, delete, export."""

from __future__ import annotations

import io
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import trio

from fgd import custom
from fgd.codefetch import fetch_to_file
from fgd.codestore import CodeStore, inline_zip
from fgd.config import CodeFetchConfig, NetworkConfig
from fgd.dependencies import Dependencies
from fgd.destinations import check_no_cycle, targets
from fgd.errors import Conflict, InvalidParameter, NotFound
from fgd.interpreters import Catalogue
from fgd.invoker import Invoker
from fgd.logs import LogSink
from fgd.model import (
    AsyncConfigAnswer,
    AsyncInvokeConfig,
    CodeRef,
    CodeSource,
    CreateFunction,
    DestinationAnswer,
    DestinationsAnswer,
    FuncCode,
    FuncLogConfig,
    FunctionCode,
    FunctionConfig,
    FunctionRecord,
    FunctionRef,
    FunctionSettings,
    ReservedAnswer,
    ReservedInstances,
    UpdateCode,
    check_code_source,
    convert,
    cpu_millicores,
    function_urn,
    json_object_text,
    normalise_settings,
    settings_of,
    timestamp,
)
from fgd.netpolicy import NONE, OUTBOUND, Destination, FunctionNetwork, ungranted
from fgd.store import Store
from fgd.versions import Versions, is_latest, lookup
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
        runtimes: Catalogue,
        code_fetch: CodeFetchConfig | None = None,
    ) -> None:
        self._code_fetch = code_fetch or CodeFetchConfig()
        self._dependencies = dependencies
        # Set by the daemon once triggers exist (they need the dispatcher, which needs the invoker).
        self.triggers = None
        self._store = store
        self.store = store
        self._logs = logs
        self.packager = dependencies.packager
        self._code = code
        self._invoker = invoker
        self.region = region
        self.runtimes = runtimes
        # Issue 14: the node's [network] (default mode, whether outbound is allowed); set by the daemon.
        self.network_config: NetworkConfig | None = None
        self.versions = Versions(store, region)
        self.versions.on_gone = invoker.stop_qualifier

    def get(self, ref: FunctionRef) -> FunctionRecord:
        """The record `ref` names: latest, a published version, or an alias's main version (fgd.versions)."""
        return lookup(self._store, ref)

    @staticmethod
    def latest_only(record: FunctionRecord, what: str) -> None:
        if not is_latest(record):
            raise InvalidParameter(
                f"{what}: {record.qualifier} is a published version or an alias, which never changes; "
                "change latest (the unqualified URN) and publish a new version"
            )

    def config(self, record: FunctionRecord) -> FunctionConfig:
        s = record.settings
        code = self.code_info(record)
        func_id = function_id(record)
        log = s.log_config or FuncLogConfig()
        return FunctionConfig(
            **{name: getattr(code, name) for name in FunctionCode.__struct_fields__},
            func_id=func_id,
            resource_id=func_id,
            namespace=record.project_id,
            project_name=record.project_id,
            package=record.package,
            project_id=record.project_id,
            type=record.func_type,
            handler=s.handler,
            memory_size=s.memory_size,
            cpu=cpu_millicores(s.memory_size),
            timeout=s.timeout,
            user_data=json_object_text(dict(s.user_data)),
            # Values of encrypted variables are never returned.
            encrypted_user_data=json_object_text({key: "" for key in s.encrypted_user_data}),
            initializer_handler=s.initializer_handler,
            initializer_timeout=s.initializer_timeout,
            pre_stop_handler=s.pre_stop_handler,
            pre_stop_timeout=s.pre_stop_timeout,
            description=s.description,
            ephemeral_storage=s.ephemeral_storage,
            enable_dynamic_memory=s.enable_dynamic_memory,
            version=record.version,
            xrole=s.xrole,
            app_xrole=s.app_xrole,
            network_controller=s.network_controller,
            network=s.network,
            enterprise_project_id=s.enterprise_project_id,
            log_config=s.log_config,
            log_group_id=log.group_id,
            log_stream_id=log.stream_id,
            enable_lts_log=s.enable_lts_log,
            lts_custom_tag=dict(s.lts_custom_tag),
            domain_names=s.domain_names,
            user_data_encrypt_kms_key_id=s.user_data_encrypt_kms_key_id,
            is_stateful_function=s.is_stateful_function,
            enable_auth_in_header=s.enable_auth_in_header,
            extend_config=s.extend_config,
            restore_hook_handler=s.restore_hook_handler,
            restore_hook_timeout=s.restore_hook_timeout,
            heartbeat_handler=s.heartbeat_handler,
            enable_class_isolation=s.enable_class_isolation,
            func_vpc=s.func_vpc,
            peering_cidr=s.peering_cidr,
            mount_config=s.mount_config,
            custom_image=s.custom_image,
            gpu_memory=s.gpu_memory,
            gpu_type=s.gpu_type,
            long_time=s.timeout > STANDARD_TIMEOUT,
            reserved_instance_count=record.reserved,
            reserved_instance_idle_mode=record.reserved_idle_mode,
            tags=record.tags,
            runtime_interpreter=self._interpreter_of(record.runtime),
        )

    def _interpreter_of(self, runtime: str) -> dict[str, object] | None:
        interpreter = self.runtimes.serving(runtime)
        return None if interpreter is None else interpreter.describe()

    def code_info(self, record: FunctionRecord) -> FunctionCode:
        s = record.settings
        dependencies = []
        for version_id in s.depend_version_list:
            try:
                dependencies.append(
                    self._dependencies.info(self._dependencies.get_version(record.project_id, version_id))
                )
            except NotFound:
                continue  # a public dependency the operator removed: the function's start will say so
        return FunctionCode(
            func_urn=function_urn(self.region, record),
            func_name=record.func_name,
            domain_id=domain_id(self.region),
            runtime=record.runtime,
            code_type=record.code_type,
            code_url=record.code_url,
            code_filename=record.code_filename,
            code_size=record.code.size,
            digest=record.code.sha512,
            last_modified=timestamp(record.last_modified),
            # The code itself is not inlined (it may be 300 MB): the link is the OBS link given at
            # upload, else the export route that serves the zip.
            func_code=FuncCode(
                file="",
                link=record.code_link
                or f"/v2/{record.project_id}/fgs/functions/{function_urn(self.region, record)}/export?code=true",
            ),
            depend_list=list(s.depend_version_list),
            depend_version_list=list(s.depend_version_list),
            strategy_config=s.strategy_config,
            dependencies=dependencies,
            code_encrypt_kms_key_id=record.code_encrypt_kms_key_id,
        )

    def async_config(self, record: FunctionRecord) -> AsyncConfigAnswer:
        config = record.async_config
        return AsyncConfigAnswer(
            func_urn=function_urn(self.region, record, record.qualifier),
            max_async_event_age_in_seconds=config.max_async_event_age_in_seconds,
            max_async_retry_attempts=config.max_async_retry_attempts,
            destination_config=destinations_answer(config.destination_config),
            created_time=timestamp(record.async_created) if record.async_created else "",
            last_modified=timestamp(record.async_modified) if record.async_modified else "",
            enable_async_status_log=config.enable_async_status_log,
            log_group_id=config.log_group_id,
            log_stream_id=config.log_stream_id,
            log_group_name=config.log_group_name,
            log_stream_name=config.log_stream_name,
        )

    def reserved(self, record: FunctionRecord) -> ReservedAnswer:
        return ReservedAnswer(
            func_urn=function_urn(self.region, record, record.qualifier),
            count=record.reserved,
            idle_mode=record.reserved_idle_mode,
            tactics_config=None,
        )

    def _check_runtime(self, runtime: str) -> None:
        # Issue 12: a 400 saying why (Python 2 refused, a version the node lacks, exact mode).
        self.runtimes.check(runtime)

    def _check_bootstrap(self, runtime: str, code: CodeRef) -> None:
        # Issue 13: a Custom/http function's code must start with an executable `bootstrap`.
        if custom.mode_of(runtime) != "python":
            custom.check_bootstrap(self._code.tree_path(code.sha256), runtime)

    async def _store_code(self, code_type: str, source: CodeSource, handler: str) -> CodeRef:
        if source.url:
            # Streamed to a staging file and judged like a raw upload.
            return await self.packager.store_file(await fetch_to_file(source.url, self._code, self._code_fetch))
        data = decode_inline("func_code.file", source.file, self._code)
        if code_type == "inline":
            data = inline_zip(data, handler)
        return await self.packager.store_bytes(data)

    async def create(self, project_id: str, body: object) -> FunctionRecord:
        request: CreateFunction = convert(body, CreateFunction, "the function definition")
        self._check_runtime(request.runtime)
        settings = normalise_settings(settings_of(request), request.runtime)
        settings = self._network_settings(settings, body)
        # Issue 12: an agency must be one of the node's credential sets.
        self._invoker.agencies.check(settings.xrole, settings.app_xrole, project_id)
        self._dependencies.resolve(project_id, request.runtime, settings.depend_version_list)
        key = (project_id, request.package, request.func_name)
        if self._store.get(key) is not None:
            raise Conflict(f"function {request.package}:{request.func_name} already exists in project {project_id}")
        source = check_code_source(request.code_type, request.func_code, request.code_url)
        code = await self._store_code(request.code_type, source, settings.handler)
        self._check_bootstrap(request.runtime, code)
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
            func_type=request.type,
            tags=request.tags,
            code_link=source.link,
            code_url=source.url,
            code_encrypt_kms_key_id=request.code_encrypt_kms_key_id,
        )
        if self._store.get(key) is not None:
            raise Conflict(f"function {request.package}:{request.func_name} already exists in project {project_id}")
        await self._store.put(record)
        return record

    def _network_settings(
        self, settings: FunctionSettings, body: object, current: FunctionNetwork | None = None
    ) -> FunctionSettings:
        """Issue 14: the mode stored resolved (the node's default when the body gives none), and
        `outbound` asked for explicitly on a node that forbids it refused."""
        config = self.network_config
        if config is None:
            return settings
        asked = body.get("network") if isinstance(body, dict) else None
        if isinstance(asked, dict) and asked.get("mode") == OUTBOUND and not config.allow_outbound:
            raise InvalidParameter(
                "network.mode: outbound is forbidden on this node ([network] allow_outbound = false); "
                "use mode none or leave it out"
            )
        network = settings.network or FunctionNetwork()
        # Only what the request adds is judged: a function whose grant the operator narrowed stays
        # editable (and fgd.network applies only what is still granted).
        kept = list(current.allow) if current is not None else []
        refused = ungranted([d for d in network.allow if d not in kept], config.function_allow_within)
        if refused:
            granted = ", ".join(_describe(d) for d in config.function_allow_within) or "nothing"
            raise InvalidParameter(
                f"network.allow: {', '.join(_describe(d) for d in refused)} is not within what the operator "
                f"lets functions allow themselves ([network] function_allow_within: {granted})"
            )
        if network.mode is None:
            # An update that gives only `allow` keeps the mode the function had.
            default = config.default_mode if config.allow_outbound else NONE
            mode = current.mode if current is not None and current.mode is not None else default
            network = msgspec.structs.replace(network, mode=mode)
        return msgspec.structs.replace(settings, network=network)

    async def update_config(self, record: FunctionRecord, body: object) -> FunctionRecord:
        self.latest_only(record, "the function config")
        if not isinstance(body, dict):
            raise InvalidParameter("the function config must be a JSON object")

        def change(current: FunctionRecord) -> dict[str, object]:
            # Applied to latest as it is when the change is made, not as the request found it.
            for field in IMMUTABLE_FIELDS:
                if field in body and body[field] != getattr(current, field):
                    raise InvalidParameter(f"{field} cannot be changed; create a new function instead")
            changes = {k: v for k, v in body.items() if k not in IMMUTABLE_FIELDS}
            merged = {**msgspec.to_builtins(current.settings), **changes}
            settings = normalise_settings(convert(merged, FunctionSettings, "the function config"), current.runtime)
            settings = self._network_settings(settings, body, current.settings.network)
            # Only a changed name is judged: a function whose agency the operator removed stays editable.
            old = current.settings
            self._invoker.agencies.check(
                "" if settings.xrole == old.xrole else settings.xrole,
                "" if settings.app_xrole == old.app_xrole else settings.app_xrole,
                current.project_id,
            )
            self._dependencies.resolve(current.project_id, current.runtime, settings.depend_version_list)
            return {"settings": settings}

        return await self._replace(record, change)

    async def update_code(self, record: FunctionRecord, body: object) -> FunctionRecord:
        self.latest_only(record, "the code")
        request: UpdateCode = convert(body, UpdateCode, "the code update")
        source = check_code_source(request.code_type, request.func_code, request.code_url)
        if request.depend_version_list is not None:
            self._dependencies.resolve(record.project_id, record.runtime, request.depend_version_list)
        code = await self._store_code(request.code_type, source, record.settings.handler)
        self._check_bootstrap(record.runtime, code)

        def change(current: FunctionRecord) -> dict[str, object]:
            # Storing the code may take a while (a download): a config change made meanwhile stays.
            settings = current.settings
            if request.depend_version_list is not None:
                settings = msgspec.structs.replace(settings, depend_version_list=list(request.depend_version_list))
            return {
                "code_filename": request.code_filename or current.code_filename,
                "code_encrypt_kms_key_id": request.code_encrypt_kms_key_id or current.code_encrypt_kms_key_id,
                "settings": settings,
            }

        return await self._replace(
            record, change, code=code, code_type=request.code_type, code_link=source.link, code_url=source.url
        )

    def reserved_running(self, record: FunctionRecord) -> int:
        return self._invoker.reserved_count(record)

    async def set_reserved(self, record: FunctionRecord, body: object) -> FunctionRecord:
        """PUT .../reservedinstances {"count": n}: keep n instances started and warm."""
        request: ReservedInstances = convert(body, ReservedInstances, "the reserved instances")
        tactics = request.tactics_config
        if tactics is not None and (tactics.cron_configs or tactics.metric_configs):
            raise InvalidParameter(
                "tactics_config: scheduled and metric-driven reserved instances are not supported on this node; "
                "leave it out (or give empty cron_configs and metric_configs)"
            )
        count = request.count
        cap = record.effective_max_instances
        if not 0 <= count <= 1000 or (cap >= 0 and count > cap):
            raise InvalidParameter(
                f"count must be 0-1000 and at most the function's max instances "
                f"(strategy_config.concurrency = {cap}); got {count}"
            )
        if not is_latest(record):
            # A version's or an alias's own (fgd.versions).
            updated = await self.versions.set_scaling(record, reserved=count, reserved_idle_mode=request.idle_mode)
            self._invoker.reserved_changed()
            return updated
        async with self.versions.lock:
            self.versions.check_reserved_rule(record.key, "latest", None, count)
            current = self._current(record)
            updated = msgspec.structs.replace(
                current, reserved=count, reserved_idle_mode=request.idle_mode, last_modified=time.time()
            )
            await self._save(updated)
        self._invoker.reserved_changed()
        return updated

    async def set_async_config(self, record: FunctionRecord, body: object) -> FunctionRecord:
        config = convert(body, AsyncInvokeConfig, "the async invoke config")
        checked = targets(self._store, record, config.destination_config, self.region)
        check_no_cycle(self._store, record, checked, self.region)
        now = time.time()
        if not is_latest(record):
            # A version's or an alias's own (fgd.versions); DELETE: back to the version's defaults.
            if body == {}:
                return await self.versions.set_scaling(
                    record, async_config=config, async_created=0.0, async_modified=0.0
                )
            created = record.async_created or now
            return await self.versions.set_scaling(
                record, async_config=config, async_created=created, async_modified=now
            )
        async with self.versions.lock:
            current = self._current(record)
            if body == {}:
                # DELETE: back to the defaults, as if never set.
                updated = msgspec.structs.replace(current, async_config=config, async_created=0.0, async_modified=0.0)
            else:
                created = current.async_created or now
                updated = msgspec.structs.replace(
                    current, async_config=config, async_created=created, async_modified=now
                )
            await self._save(updated)
        return updated

    async def set_max_instances(self, record: FunctionRecord, body: object) -> FunctionRecord:
        """PUT .../config-max-instance {"max_instance_num": n} (FunctionGraph's shortcut)."""
        if not isinstance(body, dict) or "max_instance_num" not in body:
            raise InvalidParameter('the body must be {"max_instance_num": <-1, 0 or 1-1000>}')
        if not is_latest(record):
            # A version's or an alias's own: its frozen strategy_config stays as published.
            value = body["max_instance_num"]
            if type(value) is not int or not -1 <= value <= 1000:
                raise InvalidParameter(f"max_instance_num must be an integer from -1 to 1000, not {value!r}")
            return await self.versions.set_scaling(record, max_instances=value)
        strategy = msgspec.to_builtins(record.settings.strategy_config) | {"concurrency": body["max_instance_num"]}
        return await self.update_config(record, {"strategy_config": strategy})

    async def update_code_file(self, record: FunctionRecord, path: Path, code_filename: str) -> FunctionRecord:
        """Replace the code with a zip streamed to `path` (consumed)."""
        if not is_latest(record):
            path.unlink(missing_ok=True)
            self.latest_only(record, "the code")
        code = await self.packager.store_file(path)
        return await self._replace(
            record,
            lambda current: {"code_filename": code_filename or current.code_filename},
            code=code,
            code_type="zip",
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

    async def _replace(
        self,
        record: FunctionRecord,
        change: Callable[[FunctionRecord], dict[str, object]] | None = None,
        **changes: object,
    ) -> FunctionRecord:
        """A new state of latest, made from latest as stored when it is written: one change at a time
        (under the versions lock, so a publish never sees half of one), none lost to another."""
        async with self.versions.lock:
            current = self._current(record)
            if change is not None:
                changes = {**change(current), **changes}
            updated = msgspec.structs.replace(
                current, revision=current.revision + 1, last_modified=time.time(), **changes
            )
            await self._save(updated)
        self._invoker.retire(updated.key, "latest")
        return updated

    async def delete(self, record: FunctionRecord) -> None:
        if not is_latest(record):
            # A version's URN: that version only, with its aliases and their triggers. latest's
            # (with or without :latest) deletes the whole function: latest never goes alone.
            await self.versions.delete_version(record)
            return
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


# FunctionGraph's standard timeout limit; longer functions are "long_time" ones.
STANDARD_TIMEOUT = 900
_IDS = uuid.UUID("0b6f8c8e-3c39-4d0c-9a57-7f0e6c1d2a41")


def function_id(record: FunctionRecord) -> str:
    """A stable id for the function: a function deleted and made again under the same name gets a new one."""
    return str(uuid.uuid5(_IDS, f"{record.project_id}/{record.package}/{record.func_name}/{record.created!r}"))


def domain_id(region: str) -> str:
    """The node stands for one FunctionGraph account (domain): a fixed 32-hex id per region name."""
    return uuid.uuid5(_IDS, f"domain/{region}").hex


def destinations_answer(config: dict[str, Any]) -> DestinationsAnswer:
    """The stored destination_config as FunctionGraph answers it: `param` a JSON string."""
    found: dict[str, DestinationAnswer] = {}
    for condition in ("on_success", "on_failure"):
        spec = config.get(condition)
        if isinstance(spec, dict):
            param = spec.get("param", "")
            text = param if isinstance(param, str) else msgspec.json.encode(param).decode()
            found[condition] = DestinationAnswer(destination=str(spec.get("destination", "")), param=text)
    return DestinationsAnswer(**found)


def _describe(destination: Destination) -> str:
    ports = ",".join(map(str, destination.ports)) or "every port"
    return f"{destination.cidr} {destination.protocol} {ports}"
