"""The function resource: one definition used by the API, the store and the CLI."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from fgd.errors import InvalidParameter
from fgd.netpolicy import FunctionNetwork
from runtimes import protocol

FUNC_NAME_RE = r"^[A-Za-z]([A-Za-z0-9_-]*[A-Za-z0-9])?\Z"
PACKAGE_RE = r"^[A-Za-z0-9_-]{1,64}\Z"
PROJECT_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
USER_DATA_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*\Z")
HANDLER_RE = re.compile(r"^(?!/)(?:[A-Za-z0-9_-]+/)*[A-Za-z0-9_-]+\.[A-Za-z_][A-Za-z0-9_]*\Z")
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
# A FunctionGraph name or id kept as metadata; bounded, as everything stored is.
Label = Annotated[str, Meta(max_length=256)]
Labels = Annotated[list[Label], Meta(max_length=64)]
# FunctionGraph's code types; only inline and zip are taken (check_code_source says why not the rest).
CodeType = Literal["inline", "zip", "obs", "jar", "Custom-Image-Swr"]


class StrategyConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    concurrency: MaxInstances = 400
    concurrent_num: ConcurrentNum = 1


class FuncCode(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    file: str = ""
    # FunctionGraph's OBS link to the code; kept and returned as given (fgd has no OBS).
    link: Annotated[str, Meta(max_length=2048)] = ""


# FunctionGraph fields fgd keeps and returns as given, or accepts only with their "off" value
# (see `refuse_unsupported`). Every field of FunctionGraph's request models is listed, so
# forbid_unknown_fields still catches typos.


class FuncVpc(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    domain_id: Label = ""
    namespace: Label = ""
    vpc_name: Label = ""
    vpc_id: Label = ""
    subnet_name: Label = ""
    subnet_id: Label = ""
    cidr: Label = ""
    gateway: Label = ""
    security_groups: Labels = []
    is_safety: bool = False


class CustomImage(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    enabled: bool = False
    image: Label = ""
    command: Label = ""
    args: Label = ""
    working_dir: Label = ""
    uid: Label = ""
    gid: Label = ""
    is_public: bool = False


class MountUser(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    user_id: int = -1
    user_group_id: int = -1


class FuncMount(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    mount_type: Label = ""
    mount_resource: Label = ""
    mount_share_path: Label = ""
    local_mount_path: Label = ""


class MountConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    mount_user: MountUser | None = None
    func_mounts: list[FuncMount] = []


class FuncLogConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    group_name: Label = ""
    group_id: Label = ""
    stream_name: Label = ""
    stream_id: Label = ""


class VpcConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    vpc_name: Label = ""
    vpc_id: Label = ""


class NetworkControlConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    # Issue 14: true runs the function with loopback only (network mode `none`, fgd.netpolicy).
    disable_public_network: bool = False
    trigger_access_vpcs: Annotated[list[VpcConfig], Meta(max_length=64)] = []


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
    # Stored and returned; fgd does not run a pre-stop hook when it retires an instance (yet).
    pre_stop_handler: Annotated[str, Meta(max_length=128)] = ""
    pre_stop_timeout: Annotated[int, Meta(ge=0, le=90)] = 0
    # Agencies: names of delegated identities, stored and returned.
    xrole: Label = ""
    app_xrole: Label = ""
    network_controller: NetworkControlConfig | None = None
    # Issue 14 (fgd): network mode and allowed destinations of this function (fgd.netpolicy).
    network: FunctionNetwork | None = None
    # Metadata: kept and returned unchanged, no effect on this node.
    enterprise_project_id: Label = "0"
    log_config: FuncLogConfig | None = None
    enable_lts_log: bool = False
    lts_custom_tag: Annotated[dict[Label, Label], Meta(max_length=64)] = {}
    domain_names: Annotated[str, Meta(max_length=4096)] = ""
    user_data_encrypt_kms_key_id: Label = ""
    is_stateful_function: bool = False
    enable_auth_in_header: bool = False
    extend_config: Annotated[str, Meta(max_length=4096)] = ""
    restore_hook_handler: Annotated[str, Meta(max_length=128)] = ""
    restore_hook_timeout: Annotated[int, Meta(ge=0, le=300)] = 0
    heartbeat_handler: Annotated[str, Meta(max_length=128)] = ""
    enable_class_isolation: bool = False
    # Accepted only with their "off" value (refuse_unsupported): this node cannot honour them.
    func_vpc: FuncVpc | None = None
    peering_cidr: Label = ""
    mount_config: MountConfig | None = None
    custom_image: CustomImage | None = None
    gpu_memory: int = 0
    gpu_type: Label = ""


class CreateFunction(FunctionSettings, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Body of `POST /functions`."""

    func_name: FuncName
    package: Package = "default"
    runtime: str
    code_type: CodeType = "inline"
    func_code: FuncCode | None = None
    code_url: str = ""
    code_filename: Annotated[str, Meta(max_length=128)] = ""
    code_encrypt_kms_key_id: Label = ""
    # FunctionGraph's function type (v1, v2): kept and returned.
    type: Literal["v1", "v2"] = "v2"
    tags: Annotated[str, Meta(max_length=4096)] = ""


class UpdateCode(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Body of `PUT .../code`."""

    code_type: CodeType = "zip"
    func_code: FuncCode | None = None
    code_url: str = ""
    code_filename: Annotated[str, Meta(max_length=128)] = ""
    # Replaces the function's dependencies with the code when given; left out: they stay.
    depend_version_list: Annotated[list[str], Meta(max_length=20)] | None = None
    code_encrypt_kms_key_id: Label = ""


class CodeSource(msgspec.Struct, frozen=True):
    """Where a create or code update takes its code from: base64 in the body, or a URL to fetch."""

    file: str = ""
    url: str = ""
    # FunctionGraph's OBS link, kept and returned as given.
    link: str = ""


def check_code_source(code_type: str, func_code: FuncCode | None, code_url: str) -> CodeSource:
    """The code in the body; 400 for the ways of giving it this node does not take."""
    if code_type == "obs":
        if not code_url:
            raise InvalidParameter("code_type obs needs code_url: the http or https URL of the code's zip")
        return CodeSource(url=code_url, link=func_code.link if func_code else "")
    if code_url:
        raise InvalidParameter(f"code_url is read only with code_type obs (got code_type {code_type})")
    if code_type == "jar":
        raise InvalidParameter("code_type jar (Java) is not supported on this node; send a zip")
    if code_type == "Custom-Image-Swr":
        raise InvalidParameter("code_type Custom-Image-Swr (custom images) is not supported on this node")
    if func_code is None or not func_code.file:
        raise InvalidParameter(f"missing required field func_code.file (the code, base64) for code_type {code_type}")
    return CodeSource(file=func_code.file, link=func_code.link)


class AsyncInvokeConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """`PUT .../async-invoke-config`: how asynchronous invocations are retried and aged out."""

    max_async_event_age_in_seconds: Annotated[int, Meta(ge=1, le=86400)] = 3600
    max_async_retry_attempts: Annotated[int, Meta(ge=0, le=8)] = 1
    destination_config: dict[str, Any] = {}
    # Metadata: status logs go to LTS on FunctionGraph; kept and returned.
    enable_async_status_log: bool = False
    log_group_id: Label = ""
    log_stream_id: Label = ""
    log_group_name: Label = ""
    log_stream_name: Label = ""


class CronConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    name: Label = ""
    cron: Label = ""
    count: int = 0
    start_time: int = 0
    expired_time: int = 0


class MetricConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    name: Label = ""
    type: Label = ""
    threshold: int = 0
    min: int = 0


class TacticsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Scheduled and metric-driven reserved instances: accepted only empty (Functions.set_reserved)."""

    cron_configs: list[CronConfig] = []
    metric_configs: list[MetricConfig] = []


class ReservedInstances(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Body of `PUT .../reservedinstances`, and (with func_urn) its answer."""

    count: Annotated[int, Meta(ge=0, le=1000)]
    # FunctionGraph's cheaper idle reserved instances; fgd keeps them fully warm: kept and returned.
    idle_mode: bool = False
    tactics_config: TacticsConfig | None = None


class CodeRef(msgspec.Struct, frozen=True):
    """A stored code zip: content-addressed by sha256; digest is its sha512."""

    # Checked when a stored record is read back: the store's paths are built from it.
    sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}\Z")]
    sha512: str
    size: int


DependencyName = Annotated[str, Meta(min_length=1, max_length=96, pattern=r"^[A-Za-z][A-Za-z0-9_.-]*\Z")]


class CreateDependency(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Body of `POST /dependencies/version` (JSON form; the raw form takes these as query parameters)."""

    name: DependencyName
    runtime: str
    description: Description = ""
    depend_type: Literal["zip", "obs"] = "zip"
    depend_file: str = ""
    depend_link: str = ""


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


TriggerName = Annotated[str, Meta(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}\Z")]


class TimerEventData(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    name: TriggerName
    schedule_type: Literal["Rate", "Cron"]
    schedule: Annotated[str, Meta(min_length=1, max_length=256)]
    user_event: Annotated[str, Meta(max_length=4096)] = ""


class ApigTriggerFuncInfo(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    function_urn: Label = ""
    # The gateway invokes synchronously; "async" is refused (Triggers._check).
    invocation_type: Literal["sync", "async"] = "sync"
    timeout: int = 5000
    version: Label = "latest"


class ApigEventData(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    name: TriggerName
    path: Annotated[str, Meta(pattern=r"^/[A-Za-z0-9_./~%-]*\Z", max_length=512)]
    req_method: Literal["ANY", "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"] = "ANY"
    auth: Literal["NONE", "TOKEN"] = "NONE"
    match_mode: Literal["SWA", "NORMAL"] = "SWA"
    # FunctionGraph's API gateway settings: kept and returned; fgd's gateway is one local listener.
    type: int = 1
    protocol: Literal["HTTP", "HTTPS"] = "HTTPS"
    group_id: Label = ""
    group_name: Label = ""
    env_name: Label = ""
    env_id: Label = ""
    sl_domain: Label = ""
    backend_type: Label = "FUNCTION"
    instance_id: Label = ""
    func_info: ApigTriggerFuncInfo | None = None


class CreateTrigger(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Body of `POST /triggers/{urn}`."""

    trigger_type_code: Literal["TIMER", "APIG"]
    trigger_status: Literal["ACTIVE", "DISABLED"] = "ACTIVE"
    event_type_code: str = ""
    event_data: dict[str, Any]


class UpdateTriggerEventData(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """One item of the SDK's `event_data` list on update: polling settings of queue triggers."""

    is_serial: bool | None = None
    max_fetch_bytes: int | None = None
    polling_interval: int | None = None
    polling_unit: str | None = None


class UpdateTrigger(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Body of `PUT /triggers/{urn}/{type}/{id}`: the status, and event_data fields to change.

    FunctionGraph's SDK sends `event_data` as a list of queue polling settings; fgd's TIMER
    and APIG triggers take an object of their own fields (Triggers.update)."""

    trigger_status: Literal["ACTIVE", "DISABLED"] | None = None
    event_data: dict[str, Any] | list[UpdateTriggerEventData] | None = None


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
    # What the trigger invokes: "latest", a version, or "!alias" (fgd.versions), from the URN
    # it was created on.
    qualifier: str = "latest"

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
    reserved_idle_mode: bool = False
    async_config: AsyncInvokeConfig = AsyncInvokeConfig()
    # When the async config was first set and last changed (0: never).
    async_created: float = 0.0
    async_modified: float = 0.0
    created: float
    last_modified: float
    # Given at creation, kept and returned (CreateFunction).
    func_type: str = "v2"
    tags: str = ""
    code_link: str = ""
    # code_type obs: the URL the code was fetched from (returned as code_url).
    code_url: str = ""
    code_encrypt_kms_key_id: str = ""
    # Versions (fgd.versions): "latest", or the name of the published version this frozen copy is.
    version: str = "latest"
    version_description: str = ""
    # Set on the copy an invocation resolved through an alias (never stored): the instance's
    # getAlias() and RUNTIME_ALIAS, and its instances are that alias's own.
    alias: str = ""
    # A version's or alias's own max instances (config-max-instance on a qualified URN); None:
    # the frozen strategy_config.concurrency. latest changes strategy_config itself.
    max_instances: int | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.project_id, self.package, self.func_name)

    @property
    def qualifier(self) -> str:
        """How a URN names this copy: `latest`, a version, or `!alias`."""
        return f"!{self.alias}" if self.alias else self.version

    @property
    def effective_max_instances(self) -> int:
        return self.strategy_max if self.max_instances is None else self.max_instances

    @property
    def strategy_max(self) -> int:
        return self.settings.strategy_config.concurrency


# Versions and aliases (fgd.versions) ---------------------------------------------

# FunctionGraph's rules: a version name 1-42 characters (letters, digits, '.', '_', '-'; a letter
# or digit first); an alias 1-63 (letters, digits, '_', '-'; a letter first, no '-' or '_' last).
VERSION_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,41}\Z"
ALIAS_NAME_RE = r"^[A-Za-z]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\Z"
MAX_VERSIONS = 20  # including latest
MAX_ALIASES = 10
# An HTTP header name (RFC 9110 token), as a header rule's `param`. These end in \Z, not $:
# $ also matches before a final newline, and msgspec (re.search) would take "v1\n".
HEADER_NAME_RE = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}\Z"

VersionName = Annotated[str, Meta(pattern=VERSION_NAME_RE)]
AliasName = Annotated[str, Meta(pattern=ALIAS_NAME_RE)]
Weight = Annotated[int, Meta(ge=0, le=100)]


class PublishVersion(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Body of `POST .../versions` (FunctionGraph's CreateFunctionVersionRequestBody)."""

    version: Annotated[str, Meta(max_length=42)] = ""
    description: Description = ""
    # When given, the sha512 the caller expects latest's code to have (publish what you tested).
    digest: Annotated[str, Meta(max_length=128)] = ""


class VersionStrategyRule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    rule_type: Literal["Header"]
    param: Annotated[str, Meta(pattern=HEADER_NAME_RE)]
    op: Literal["=", "in"]
    value: Annotated[str, Meta(min_length=1, max_length=1024)]


class VersionStrategy(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    combine_type: Literal["and", "or"] = "or"
    rules: Annotated[list[VersionStrategyRule], Meta(min_length=1, max_length=10)]


# One additional version per alias (FunctionGraph's gray release).
Weights = Annotated[dict[VersionName, Weight], Meta(max_length=1)]
Strategies = Annotated[dict[VersionName, VersionStrategy], Meta(max_length=1)]


class UpdateAlias(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Body of `PUT .../aliases/{name}` (UpdateVersionAliasRequestBody)."""

    version: VersionName
    description: Description = ""
    additional_version_weights: Weights = {}
    additional_version_strategy: Strategies = {}


class CreateAlias(UpdateAlias, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Body of `POST .../aliases` (CreateVersionAliasRequestBody)."""

    name: AliasName


class AliasRecord(msgspec.Struct, kw_only=True, frozen=True):
    """An alias as stored: where it points, and its own scaling settings."""

    name: str
    version: str
    description: str = ""
    additional_version_weights: dict[str, int] = {}
    additional_version_strategy: dict[str, VersionStrategy] = {}
    created: float
    last_modified: float
    reserved: int = 0
    reserved_idle_mode: bool = False
    max_instances: int | None = None
    async_config: AsyncInvokeConfig = AsyncInvokeConfig()
    async_created: float = 0.0
    async_modified: float = 0.0

    @property
    def additional(self) -> str:
        """The additional version's name, "" if none."""
        return next(iter(self.additional_version_weights or self.additional_version_strategy), "")


class AliasAnswer(msgspec.Struct, kw_only=True, frozen=True):
    """FunctionGraph's alias model (Show/Create/UpdateVersionAliasResponse)."""

    name: str
    version: str
    description: str
    last_modified: str
    alias_urn: str
    additional_version_weights: dict[str, int]
    additional_version_strategy: dict[str, VersionStrategy]


class DependencyInfo(msgspec.Struct, kw_only=True, frozen=True):
    """A dependency version as the API answers it (FunctionGraph's Dependency)."""

    id: str
    dep_id: str
    name: str
    version: int
    runtime: str
    description: str
    owner: str
    size: int
    etag: str
    # FunctionGraph's OBS links; fgd keeps packages in its own store and serves no download.
    link: str = ""
    download_link: str = ""
    file_name: str
    # Milliseconds since the epoch.
    last_modified: int
    is_shared: bool = False


class DestinationAnswer(msgspec.Struct, kw_only=True, frozen=True):
    destination: str
    # A JSON string of the parameters (FunctionGraph's type), whatever form it was given in.
    param: str


class DestinationsAnswer(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    on_success: DestinationAnswer | None = None
    on_failure: DestinationAnswer | None = None


class AsyncConfigAnswer(msgspec.Struct, kw_only=True, frozen=True):
    func_urn: str
    max_async_event_age_in_seconds: int
    max_async_retry_attempts: int
    destination_config: DestinationsAnswer
    created_time: str
    last_modified: str
    enable_async_status_log: bool
    log_group_id: str
    log_stream_id: str
    log_group_name: str
    log_stream_name: str


class AsyncInvocation(msgspec.Struct, kw_only=True, frozen=True):
    """One asynchronous invocation as `GET .../async-invocations` lists it."""

    request_id: str
    status: str
    # 0: none; FSS.<n> refusals by the platform: <n>; the function failed: 1 (see error_type).
    error_code: int
    error_message: str
    # fgd: the FSS code, or the function's error type (RuntimeError, Runtime.Timeout, ...).
    error_type: str
    start_time: str | None
    end_time: str | None
    attempts: int


class AsyncInvocationList(msgspec.Struct, kw_only=True, frozen=True):
    invocations: list[AsyncInvocation]
    count: int
    next_marker: int = 0


class ReservedAnswer(msgspec.Struct, kw_only=True, frozen=True):
    func_urn: str
    count: int
    idle_mode: bool
    tactics_config: TacticsConfig | None


class FunctionCode(msgspec.Struct, kw_only=True, frozen=True):
    """`GET .../code`: the code and what it depends on."""

    func_urn: str
    func_name: str
    domain_id: str
    runtime: str
    code_type: str
    code_url: str
    code_filename: str
    code_size: int
    digest: str
    last_modified: str
    func_code: FuncCode
    depend_list: list[str]
    depend_version_list: list[str]
    strategy_config: StrategyConfig
    dependencies: list[DependencyInfo]
    code_encrypt_kms_key_id: str


class FunctionConfig(FunctionCode, kw_only=True, frozen=True):
    """The function config as the API answers it (FunctionGraph's function model; also the
    answer to `PUT .../code`, so it holds the code shape too)."""

    func_id: str
    resource_id: str
    namespace: str
    project_name: str
    package: str
    project_id: str
    type: str
    handler: str
    memory_size: int
    cpu: int
    timeout: int
    # JSON strings of objects, "" when there are none (FunctionGraph's type).
    user_data: str
    # Names only: the values of encrypted variables are never returned.
    encrypted_user_data: str
    initializer_handler: str
    initializer_timeout: int
    pre_stop_handler: str
    pre_stop_timeout: int
    description: str
    ephemeral_storage: int
    allow_ephemeral_storage: bool = True
    enable_dynamic_memory: bool
    version: str
    image_name: str = ""
    xrole: str
    app_xrole: str
    network_controller: NetworkControlConfig | None
    # Issue 14 (fgd): the function's network mode and allowed destinations.
    network: FunctionNetwork | None = None
    enterprise_project_id: str
    log_config: FuncLogConfig | None
    log_group_id: str
    log_stream_id: str
    enable_lts_log: bool
    lts_custom_tag: dict[str, str]
    domain_names: str
    user_data_encrypt_kms_key_id: str
    is_stateful_function: bool
    enable_auth_in_header: bool
    extend_config: str
    restore_hook_handler: str
    restore_hook_timeout: int
    heartbeat_handler: str
    enable_class_isolation: bool
    func_vpc: FuncVpc | None
    func_vpc_id: str = ""
    peering_cidr: str
    mount_config: MountConfig | None
    custom_image: CustomImage | None
    gpu_memory: int
    gpu_type: str
    # Longer than FunctionGraph's 900 s standard limit.
    long_time: bool
    reserved_instance_count: int
    reserved_instance_idle_mode: bool
    tags: str
    is_bridge_function: bool = False
    is_return_stream: bool = False
    apig_route_enable: bool = False
    enable_cloud_debug: str = ""
    # fgd (issue 12): the interpreter serving `runtime` on this node ({"path", "version"});
    # None when no interpreter here serves it.
    runtime_interpreter: dict[str, object] | None = None


class FunctionList(msgspec.Struct, kw_only=True, frozen=True):
    functions: list[FunctionConfig]
    next_marker: int
    count: int


class DependencyList(msgspec.Struct, kw_only=True, frozen=True):
    dependencies: list[DependencyInfo]
    next_marker: int = 0
    count: int


def timestamp(epoch: float) -> str:
    """FunctionGraph's time stamps, in UTC: `2026-03-28T11:30:32Z` (the SDK parses this form)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def json_object_text(value: dict[str, str]) -> str:
    """user_data as FunctionGraph answers it: a JSON string of the object, "" for none."""
    return msgspec.json.encode(value).decode() if value else ""


def cpu_millicores(memory_size: int) -> int:
    """FunctionGraph's rule: 100 millicores per 128 MB, plus 200."""
    return memory_size * 100 // 128 + 200


def function_urn(region: str, record: FunctionRecord, qualifier: str | None = None) -> str:
    """The record's URN; by default with its own version (latest, or a published one)."""
    qualifier = record.version if qualifier is None else qualifier
    return f"urn:fss:{region}:{record.project_id}:function:{record.package}:{record.func_name}:{qualifier}"


class FunctionRef(msgspec.Struct, frozen=True):
    """A function named by a path: `{urn}`, `package:name` or a bare name, maybe with a qualifier."""

    project_id: str
    package: str
    func_name: str
    # "latest", a version name, or "!alias"; a bare name may be either (Functions.get decides).
    qualifier: str = "latest"
    # `a:b`: package:name, or name:qualifier when no function a/b exists (Functions.get decides).
    ambiguous: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.project_id, self.package, self.func_name)


_QUALIFIER_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,41}|![A-Za-z]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)\Z")


def check_qualifier(text: str, qualifier: str) -> str:
    if not _QUALIFIER_RE.match(qualifier):
        raise InvalidParameter(
            f"{text!r}: qualifier {qualifier!r} is neither a version (1-42 letters, digits, '.', '_' or '-') "
            "nor !alias (a letter, then up to 62 letters, digits, '_' or '-')"
        )
    return qualifier


def parse_function_ref(project_id: str, text: str, region: str) -> FunctionRef:
    parts = text.split(":")
    if parts[0] == "urn":
        if len(parts) not in (7, 8) or parts[1] != "fss" or parts[4] != "function":
            raise InvalidParameter(
                f"function URN {text!r} is not of the form "
                "urn:fss:<region>:<project_id>:function:<package>:<name>[:<version>|:!<alias>]"
            )
        if parts[2] != region:
            raise InvalidParameter(f"function URN {text!r} names region {parts[2]!r}; this node is {region!r}")
        if parts[3] != project_id:
            raise InvalidParameter(f"function URN {text!r} names project {parts[3]!r}, not {project_id!r}")
        package, name = parts[5], parts[6]
        qualifier = check_qualifier(text, parts[7]) if len(parts) == 8 else "latest"
        return FunctionRef(project_id, package, name, qualifier)
    if len(parts) == 1:
        return FunctionRef(project_id, "default", parts[0])
    if len(parts) == 2:
        # package:name or name:qualifier; a qualifier starting with '!' can only be an alias.
        if parts[1].startswith("!"):
            return FunctionRef(project_id, "default", parts[0], check_qualifier(text, parts[1]))
        return FunctionRef(project_id, parts[0], parts[1], ambiguous=True)
    if len(parts) in (3, 4):
        # project:package:name[:qualifier] (FunctionGraph's short URN).
        if parts[0] != project_id:
            raise InvalidParameter(f"{text!r} names project {parts[0]!r}, not {project_id!r}")
        qualifier = check_qualifier(text, parts[3]) if len(parts) == 4 else "latest"
        return FunctionRef(project_id, parts[1], parts[2], qualifier)
    raise InvalidParameter(
        f"{text!r} is neither a function name, package:name, name:qualifier, "
        "project:package:name[:qualifier] nor a function URN"
    )


def check_project(project_id: str) -> None:
    if not PROJECT_RE.match(project_id):
        raise InvalidParameter(f"project_id {project_id!r} must be 1-64 letters, digits, '_' or '-'")


# FunctionGraph's preset variables (issue 12): only these are refused in user data; other
# RUNTIME_* names are the user's (published samples set RUNTIME_LOG_LEVEL).
RESERVED_USER_DATA = frozenset(
    {
        "RUNTIME_PROJECT_ID",
        "RUNTIME_FUNC_NAME",
        "RUNTIME_FUNC_VERSION",
        "RUNTIME_HANDLER",
        "RUNTIME_TIMEOUT",
        "RUNTIME_USERDATA",
        "RUNTIME_CPU",
        "RUNTIME_MEMORY",
        "RUNTIME_MAX_RESP_BODY_SIZE",
        "RUNTIME_INITIALIZER_HANDLER",
        "RUNTIME_INITIALIZER_TIMEOUT",
        "RUNTIME_ROOT",
        "RUNTIME_CODE_ROOT",
        "RUNTIME_LOG_DIR",
        # Set for Custom and http functions.
        "RUNTIME_PACKAGE",
        "RUNTIME_API_ADDR",
    }
)


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
        if key in RESERVED_USER_DATA:
            raise InvalidParameter(f"{field}: variable name {key!r} is reserved (the platform sets it)")
        total += len(key) + len(item)
    if total > USER_DATA_MAX:
        raise InvalidParameter(f"{field} is {total} characters; the limit is {USER_DATA_MAX}")
    return dict(value)


# Issue 13: a Custom or http function's handler names its `bootstrap`, not file.function
# (fgd.interpreters.CUSTOM_RUNTIMES; FunctionGraph's default for them is "bootstrap").
BOOTSTRAP_RUNTIMES = ("Custom", "http")


def normalise_settings(settings: FunctionSettings, runtime: str = "") -> FunctionSettings:
    """Checks the type system cannot express; returns the canonical form."""
    if runtime not in BOOTSTRAP_RUNTIMES and not HANDLER_RE.match(settings.handler):
        raise InvalidParameter(f"handler {settings.handler!r} must be file.function or dir/file.function")
    if settings.initializer_handler and not HANDLER_RE.match(settings.initializer_handler):
        raise InvalidParameter(
            f"initializer_handler {settings.initializer_handler!r} must be file.function or dir/file.function"
        )
    for field in ("pre_stop_handler", "restore_hook_handler", "heartbeat_handler"):
        value = getattr(settings, field)
        if value and not HANDLER_RE.match(value):
            raise InvalidParameter(f"{field} {value!r} must be file.function or dir/file.function")
    refuse_unsupported(settings)
    user_data = _user_data("user_data", settings.user_data)
    encrypted = _user_data("encrypted_user_data", settings.encrypted_user_data)
    both = set(user_data) & set(encrypted)
    if both:
        raise InvalidParameter(f"variable {sorted(both)[0]!r} is in both user_data and encrypted_user_data")
    return msgspec.structs.replace(settings, user_data=user_data, encrypted_user_data=encrypted)


def _unsupported(field: str, what: str) -> InvalidParameter:
    return InvalidParameter(f"{field}: {what} is not supported on this node; leave it out (or give its off value)")


def refuse_unsupported(settings: FunctionSettings) -> None:
    """400 for fields this node cannot honour where ignoring them would mislead; each is
    accepted with its "off" value, as FunctionGraph's own answers carry them."""
    vpc = settings.func_vpc
    if vpc is not None and (vpc.vpc_id or vpc.vpc_name or vpc.subnet_id or vpc.subnet_name or vpc.cidr):
        raise _unsupported("func_vpc", "attaching a function to a VPC")
    if settings.peering_cidr:
        raise _unsupported("peering_cidr", "VPC peering")
    if settings.mount_config is not None and settings.mount_config.func_mounts:
        raise _unsupported("mount_config.func_mounts", "mounting file systems (SFS, EFS, ECS shares)")
    if settings.custom_image is not None and settings.custom_image.enabled:
        raise _unsupported("custom_image", "running a container image")
    if settings.gpu_memory:
        raise _unsupported("gpu_memory", "GPU memory")
    if settings.gpu_type:
        raise _unsupported("gpu_type", "GPU")


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
