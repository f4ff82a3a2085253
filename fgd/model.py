"""The function resource: one definition used by the API, the store and the CLI."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from fgd.errors import InvalidParameter
from runtimes import protocol

FUNC_NAME_RE = r"^[A-Za-z]([A-Za-z0-9_-]*[A-Za-z0-9])?$"
PACKAGE_RE = r"^[A-Za-z0-9_-]{1,64}$"
PROJECT_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
USER_DATA_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
HANDLER_RE = re.compile(r"^(?!/)(?:[A-Za-z0-9_-]+/)*[A-Za-z0-9_-]+\.[A-Za-z_][A-Za-z0-9_]*$")
USER_DATA_MAX = 4096
MAX_RESPONSE_BYTES = protocol.MAX_RESPONSE

FuncName = Annotated[str, Meta(min_length=1, max_length=60, pattern=FUNC_NAME_RE)]
Package = Annotated[str, Meta(pattern=PACKAGE_RE)]
MemorySize = Annotated[int, Meta(ge=64, le=10240)]
Timeout = Annotated[int, Meta(ge=1, le=259200)]
InitializerTimeout = Annotated[int, Meta(ge=1, le=300)]
Description = Annotated[str, Meta(max_length=512)]
EphemeralStorage = Annotated[int, Meta(ge=512, le=10240)]
MaxInstances = Annotated[int, Meta(ge=-1, le=1000)]
ConcurrentNum = Annotated[int, Meta(ge=1, le=1000)]
UserData = dict[str, str] | str


class StrategyConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    concurrency: MaxInstances = 400
    concurrent_num: ConcurrentNum = 1


class FuncCode(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    file: str


class FunctionSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """The fields `PUT .../config` may change."""

    handler: Annotated[str, Meta(min_length=1, max_length=128)]
    memory_size: MemorySize = 128
    timeout: Timeout = 3
    user_data: UserData = {}
    encrypted_user_data: UserData = {}
    initializer_handler: Annotated[str, Meta(max_length=128)] = ""
    initializer_timeout: InitializerTimeout = 30
    description: Description = ""
    strategy_config: StrategyConfig = StrategyConfig()
    depend_version_list: Annotated[list[str], Meta(max_length=20)] = []
    ephemeral_storage: EphemeralStorage = 512
    # Let callers pick the instance's memory per request (X-Cff-Instance-Memory).
    enable_dynamic_memory: bool = False


class CreateFunction(FunctionSettings, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Body of `POST /functions`."""

    func_name: FuncName
    package: Package = "default"
    runtime: str
    code_type: Literal["inline", "zip"] = "inline"
    func_code: FuncCode
    code_filename: Annotated[str, Meta(max_length=128)] = ""


class UpdateCode(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Body of `PUT .../code`."""

    code_type: Literal["inline", "zip"] = "zip"
    func_code: FuncCode
    code_filename: Annotated[str, Meta(max_length=128)] = ""


class AsyncInvokeConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """`PUT .../async-invoke-config`: how asynchronous invocations are retried and aged out."""

    max_async_event_age_in_seconds: Annotated[int, Meta(ge=1, le=86400)] = 3600
    max_async_retry_attempts: Annotated[int, Meta(ge=0, le=8)] = 1
    destination_config: dict[str, Any] = {}


class CodeRef(msgspec.Struct, frozen=True):
    """A stored code zip: content-addressed by sha256; digest is its sha512."""

    # Checked when a stored record is read back: the store's paths are built from it.
    sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
    sha512: str
    size: int


DependencyName = Annotated[str, Meta(min_length=1, max_length=96, pattern=r"^[A-Za-z][A-Za-z0-9_.-]*$")]


class CreateDependency(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Body of `POST /dependencies/version` (JSON form; the raw form takes these as query parameters)."""

    name: DependencyName
    runtime: str
    description: Description = ""
    depend_type: Literal["zip"] = "zip"
    depend_file: str = ""


class DependencyVersion(msgspec.Struct, kw_only=True, frozen=True):
    """One version of a dependency package, as stored and as the API answers it."""

    id: str
    dep_id: str
    project_id: str
    name: str
    version: int
    runtime: str
    description: str
    owner: Literal["private", "public"]
    size: int
    etag: str
    depend_type: str = "zip"
    created: str
    code: CodeRef


TriggerName = Annotated[str, Meta(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")]


class TimerEventData(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    name: TriggerName
    schedule_type: Literal["Rate", "Cron"]
    schedule: Annotated[str, Meta(min_length=1, max_length=256)]
    user_event: Annotated[str, Meta(max_length=4096)] = ""


class ApigEventData(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    name: TriggerName
    path: Annotated[str, Meta(pattern=r"^/[A-Za-z0-9_./~%-]*$", max_length=512)]
    req_method: Literal["ANY", "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"] = "ANY"
    auth: Literal["NONE", "TOKEN"] = "NONE"
    match_mode: Literal["SWA", "NORMAL"] = "SWA"


class CreateTrigger(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Body of `POST /triggers/{urn}`."""

    trigger_type_code: Literal["TIMER", "APIG"]
    trigger_status: Literal["ACTIVE", "DISABLED"] = "ACTIVE"
    event_type_code: str = ""
    event_data: dict[str, Any]


class Trigger(msgspec.Struct, kw_only=True, frozen=True):
    """A trigger as stored and as the API answers it."""

    trigger_id: str
    trigger_type_code: str
    trigger_status: str
    event_data: dict[str, Any]
    project_id: str
    package: str
    func_name: str
    created_time: str
    last_updated_time: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.project_id, self.package, self.func_name)


class FunctionRecord(msgspec.Struct, kw_only=True, frozen=True):
    """What the store keeps for one function (its latest version)."""

    project_id: str
    package: str
    func_name: str
    runtime: str
    settings: FunctionSettings
    code: CodeRef
    code_type: str
    code_filename: str
    # Bumped by every change; instances specialised for an older revision retire.
    revision: int
    # Instances kept started and warm, never reaped (PUT .../reservedinstances).
    reserved: int = 0
    async_config: AsyncInvokeConfig = AsyncInvokeConfig()
    created: float
    last_modified: float

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.project_id, self.package, self.func_name)


class FunctionConfig(msgspec.Struct, kw_only=True, frozen=True):
    """The function config as the API answers it."""

    func_urn: str
    func_name: str
    package: str
    project_id: str
    runtime: str
    handler: str
    memory_size: int
    cpu: int
    timeout: int
    code_type: str
    code_filename: str
    code_size: int
    digest: str
    user_data: dict[str, str]
    encrypted_user_data: dict[str, str]
    initializer_handler: str
    initializer_timeout: int
    description: str
    strategy_config: StrategyConfig
    depend_version_list: list[str]
    ephemeral_storage: int
    enable_dynamic_memory: bool
    version: str
    last_modified: str
    reserved_instances: int = 0


def cpu_millicores(memory_size: int) -> int:
    """FunctionGraph's rule: 100 millicores per 128 MB, plus 200."""
    return memory_size * 100 // 128 + 200


def function_urn(region: str, record: FunctionRecord, qualifier: str = "latest") -> str:
    return f"urn:fss:{region}:{record.project_id}:function:{record.package}:{record.func_name}:{qualifier}"


class FunctionRef(msgspec.Struct, frozen=True):
    """A function named by a path: `{urn}`, `package:name` or a bare name."""

    project_id: str
    package: str
    func_name: str
    qualifier: str = "latest"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.project_id, self.package, self.func_name)


def parse_function_ref(project_id: str, text: str, region: str) -> FunctionRef:
    parts = text.split(":")
    if parts[0] == "urn":
        if len(parts) not in (7, 8) or parts[1] != "fss" or parts[4] != "function":
            raise InvalidParameter(
                f"function URN {text!r} is not of the form "
                "urn:fss:<region>:<project_id>:function:<package>:<name>[:<version>]"
            )
        if parts[2] != region:
            raise InvalidParameter(f"function URN {text!r} names region {parts[2]!r}; this node is {region!r}")
        if parts[3] != project_id:
            raise InvalidParameter(f"function URN {text!r} names project {parts[3]!r}, not {project_id!r}")
        package, name = parts[5], parts[6]
        qualifier = parts[7] if len(parts) == 8 else "latest"
    elif len(parts) == 2:
        package, name, qualifier = parts[0], parts[1], "latest"
    elif len(parts) == 1:
        package, name, qualifier = "default", parts[0], "latest"
    else:
        raise InvalidParameter(f"{text!r} is neither a function name, package:name nor a function URN")
    return FunctionRef(project_id, package, name, qualifier or "latest")


def check_project(project_id: str) -> None:
    if not PROJECT_RE.match(project_id):
        raise InvalidParameter(f"project_id {project_id!r} must be 1-64 letters, digits, '_' or '-'")


def _user_data(field: str, value: UserData) -> dict[str, str]:
    """Accept an object or a JSON string of one; enforce names and size."""
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            decoded: Any = json.loads(value)
        except ValueError:
            raise InvalidParameter(f"{field} must be a JSON object or a JSON string of one") from None
        except RecursionError:
            raise InvalidParameter(f"{field} is JSON nested too deeply") from None
        if not isinstance(decoded, dict) or not all(isinstance(v, str) for v in decoded.values()):
            raise InvalidParameter(f"{field} must be an object whose values are strings")
        value = decoded
    total = 0
    for key, item in value.items():
        if not USER_DATA_KEY_RE.match(key):
            raise InvalidParameter(f"{field}: variable name {key!r} must match ^[A-Za-z][A-Za-z0-9_]*$")
        if key.startswith("RUNTIME_"):
            raise InvalidParameter(f"{field}: variable name {key!r} is reserved (RUNTIME_* is set by the platform)")
        total += len(key) + len(item)
    if total > USER_DATA_MAX:
        raise InvalidParameter(f"{field} is {total} characters; the limit is {USER_DATA_MAX}")
    return dict(value)


def normalise_settings(settings: FunctionSettings) -> FunctionSettings:
    """Checks the type system cannot express; returns the canonical form."""
    if not HANDLER_RE.match(settings.handler):
        raise InvalidParameter(f"handler {settings.handler!r} must be file.function or dir/file.function")
    if settings.initializer_handler and not HANDLER_RE.match(settings.initializer_handler):
        raise InvalidParameter(
            f"initializer_handler {settings.initializer_handler!r} must be file.function or dir/file.function"
        )
    user_data = _user_data("user_data", settings.user_data)
    encrypted = _user_data("encrypted_user_data", settings.encrypted_user_data)
    both = set(user_data) & set(encrypted)
    if both:
        raise InvalidParameter(f"variable {sorted(both)[0]!r} is in both user_data and encrypted_user_data")
    return msgspec.structs.replace(settings, user_data=user_data, encrypted_user_data=encrypted)


def convert(data: Any, kind: type[msgspec.Struct], what: str) -> Any:
    """Decode a JSON-shaped value into `kind`, naming the offending field on error."""
    if not isinstance(data, dict):
        raise InvalidParameter(f"{what} must be a JSON object")
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise InvalidParameter(_describe(exc)) from None


def _describe(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    message, sep, where = text.rpartition(" - at `")
    if sep:
        field = where.rstrip("`").removeprefix("$.")
        return f"invalid {field}: {message}"
    if text.startswith("Object missing required field"):
        return text.replace("Object missing required field", "missing required field")
    if text.startswith("Object contains unknown field"):
        return text.replace("Object contains unknown field", "unknown field")
    return text


def settings_of(create: CreateFunction) -> FunctionSettings:
    fields = {name: getattr(create, name) for name in FunctionSettings.__struct_fields__}
    return FunctionSettings(**fields)
