"""Daemon configuration: TOML decoded into Structs, every field with a default."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from fgd.netpolicy import Destination, Mode, overlap
from fgd.packages import PackageLimits

Seconds = Annotated[float, msgspec.Meta(gt=0)]
# Hardening (issue 9): values that would crash a background loop later, or wedge a part of the
# daemon silently (a negative sleep, a NaN deadline, no async slot), are refused when the file
# is read, naming the field. NaN fails every bound.
NonNegative = Annotated[float, Meta(ge=0)]
Count = Annotated[int, Meta(ge=0)]
Positive = Annotated[int, Meta(ge=1)]
Fraction = Annotated[float, Meta(gt=0, le=1)]


class ListenerConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """HTTP limits of one listener (the API's [server], the gateway's [gateway]); see fgd.web.server."""

    # Open connections at once (about 16 KB each). Past this, a new connection evicts one that
    # waits on its client: an idle keep-alive one first, else the slowest request head or body.
    # Also capped by the daemon's open-file limit.
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 4096
    # A request line and headers must arrive within this many seconds of the connection
    # opening or of the request's first byte.
    header_timeout: Seconds = 5.0
    # The longest pause between two pieces of a request body.
    body_timeout: Seconds = 10.0
    # How long an idle connection stays open between requests (when the listener is not full).
    keep_alive_timeout: Seconds = 75.0
    # The longest a client may leave a response unread (its receive window full).
    send_timeout: Seconds = 30.0
    # Hardening (issue 9): bytes of request bodies held in memory at once by this listener's
    # invocations (sync invoke on the API, every gateway route) while they arrive. Without it
    # each connection could hold a whole body (4-6 MB), unauthenticated on the gateway: 150
    # slow clients held 620 MB. Past it a request is refused with 503.
    max_body_memory: Annotated[int, msgspec.Meta(ge=1)] = 256 * 1024 * 1024


class ServerConfig(ListenerConfig, forbid_unknown_fields=True, frozen=True):
    listen: str = "127.0.0.1:8900"
    # A part of every function URN (urn:fss:<region>:...): no ":" or spaces.
    region: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}\Z")] = "local"
    # Seconds SIGTERM waits for in-flight requests before instances are killed.
    shutdown_grace: NonNegative = 10.0


class GatewayConfig(ListenerConfig, forbid_unknown_fields=True, frozen=True):
    # The listener for APIG trigger routes; "" turns it off.
    listen: str = "127.0.0.1:8901"


class InstanceConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Seconds an on-demand instance may stay idle before it is reaped.
    idle_keepalive: NonNegative = 300.0
    # Seconds a cold start may take to fork and hand over the instance.
    spawn_timeout: Seconds = 10.0


class LogConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    retention_days: Seconds = 7.0
    # Largest number of log lines, and characters, kept per invocation; the rest is counted.
    max_lines_per_invocation: Count = 10_000
    max_bytes_per_invocation: Count = 1024 * 1024
    # Stored log bytes (text and names of each line plus a small fixed share) allowed per
    # function and for the whole node; over either, the oldest lines are dropped first and the
    # drop is logged and counted. They bound fgd.db on a small disk.
    max_bytes_per_function: int = 64 * 1024 * 1024
    max_bytes_total: int = 512 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.retention_days <= 0:
            raise ValueError("logs.retention_days must be positive")
        for name in ("max_bytes_per_function", "max_bytes_total"):
            if getattr(self, name) < 64 * 1024:
                raise ValueError(f"logs.{name} must be at least 65536 (64 KiB)")


class SandboxConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Run even if the host lacks a protection (not root, no cgroups, no seccomp) or one is
    # switched off below; each one off is named at start, in /healthz and by `fgd doctor`.
    allow_degraded: bool = False
    # Protections switched off on purpose (tests, debugging), each independently of the others:
    # "namespaces", "mounts", "credentials", "capabilities", "rlimits", "fds", "seccomp", "cgroups".
    # Needs allow_degraded.
    disable: list[
        Literal["namespaces", "mounts", "credentials", "capabilities", "rlimits", "fds", "seccomp", "cgroups"]
    ] = []
    # Each instance runs as its own unprivileged uid (and gid of the same number) from
    # [uid_base, uid_base + uid_count): per-uid kernel limits are not shared between instances.
    # The default range maps to no user on a normal host.
    uid_base: int = 200_000
    uid_count: int = 65_536
    # Generic instances kept forked and contained per runtime, ready for a cold start.
    pool_size: Annotated[int, Meta(ge=0, le=1000)] = 2
    # Tasks (processes and threads) of one instance.
    pids_max: Positive = 1024
    # Tasks of all instances together (the subtree's pids.max); default min(pid_max / 2, 32768).
    node_pids_max: Positive | None = None
    # Only cgroup hierarchies mounted under this path are used (default: any).
    cgroup_root: str | None = None


class SchedulerConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Requests that may wait per function when every allowed instance is busy, and for how long.
    queue_length: Count = 50
    max_wait: NonNegative = 10.0
    # Total memory_size of live instances; default: memory_budget_fraction of the host's memory.
    memory_budget_mb: Positive | None = None
    memory_budget_fraction: Fraction = 0.8
    # The share of that budget one function's instances may hold (its first instance always may).
    function_memory_share: Fraction = 0.5


class AsyncConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Asynchronous invocations running at once: the share of capacity they may take, so they
    # never starve synchronous traffic.
    concurrency: Positive = 8
    # Retry n waits about retry_base * 2**(n-1) seconds (with jitter); a throttled one retry_base.
    retry_base: NonNegative = 1.0
    max_payload: Positive = 256 * 1024
    # Hardening (issue 9): events of one function running at once; default max(1, concurrency // 2),
    # so a flood of one slow function leaves slots for the others.
    per_function: Annotated[int, Meta(ge=1)] | None = None
    # Finished events (SUCCESS, FAIL, DISCARD) are deleted this long after they finished, and
    # beyond this many (oldest first), so a busy node's status history cannot fill its disk.
    retention_days: Annotated[float, Meta(gt=0)] = 7.0
    max_finished: Annotated[int, Meta(ge=0)] = 100_000
    # Hardening (issue 9): asynchronous invocations waiting or running on the node at most.
    # Past it POST .../invocations-async is a 429 and timer fires are skipped (logged): a
    # flood (1,000 timers of @every 1s queue 1,000 events a second) cannot fill the disk.
    max_queued: Annotated[int, Meta(ge=1)] = 100_000


class StorageConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # How often unreferenced packages (blobs and extracted trees) are removed, and how old
    # one must be first (an upload in progress is not referenced yet).
    gc_interval: Seconds = 300.0
    gc_grace: NonNegative = 600.0


class CodeFetchConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """`code_type: "obs"` with `code_url`: code the daemon fetches from an http(s) URL (fgd.codefetch)."""

    enabled: bool = True
    # CIDRs the daemon may fetch from although they are not public (loopback, private, link-local),
    # e.g. ["192.168.10.5/32"] for an artifact server on the LAN. Empty: public addresses only.
    allow: list[Annotated[str, Meta(pattern=r"^[0-9A-Fa-f.:]+(/[0-9]{1,3})?\Z")]] = []
    connect_timeout: Seconds = 10.0
    # The longest pause between two reads of the answer.
    read_timeout: Seconds = 30.0
    # The whole fetch, redirects included.
    timeout: Seconds = 300.0

    def __post_init__(self) -> None:
        for net in self.allow:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"[code_fetch] allow: {net!r} is not an address or CIDR") from None


class RuntimesConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """[runtimes] (issue 12): which Python interpreters serve the Python3.x runtime names (fgd.interpreters)."""

    # Interpreters the operator names (absolute paths); for their minor version they are chosen
    # before any the daemon finds itself.
    python: list[str] = []
    # Where the daemon looks for more, as glob patterns ($VARIABLES and ~ are expanded; a pattern
    # naming an unset variable is skipped). The daemon may run as a systemd service without
    # $PYENV_ROOT or $HOME, so root's pyenv is also spelled out.
    search: list[str] = msgspec.field(
        default_factory=lambda: [
            "/usr/bin/python3.*",
            "/usr/local/bin/python3.*",
            "$PYENV_ROOT/versions/*/bin/python3.*",
            "~/.pyenv/versions/*/bin/python3.*",
            "/root/.pyenv/versions/*/bin/python3.*",
        ]
    )
    # True: a name is served only by its own minor version (Python3.10 by 3.10.x), never by the
    # nearest newer one; a missing one is a 400 naming what is installed.
    exact_versions: bool = False
    # Seconds an interpreter may take to answer the probe (its version, whether it can run the
    # shim); one that does not answer in time is skipped with a log line.
    probe_timeout: Annotated[float, Meta(gt=0, le=60)] = 10.0
    # Runtime names whose zygotes (and pools) start at boot rather than on first use, for a
    # first cold start without the zygote's ~0.1 s start. Each must be a name the node serves.
    preload: list[str] = []
    # Where the per-interpreter shim packages are (<shim_dir>/python3.X: msgspec, python-prctl,
    # pyseccomp built for that interpreter; `make` builds them). Default: <daemon's prefix>/runtimes.
    shim_dir: str | None = None
    # Issue 12 (bundled libraries): FunctionGraph's bundled Python libraries (fgd.bundled) on
    # every Python function's import path, after its own code and dependencies.
    bundled_libraries: bool = True
    # Where scripts/build-bundled-libs put the trees (python3.X/ each); "" = build/bundled
    # next to fgd's source, where `make` builds them, or <prefix>/bundled in an installed fgd
    # (fgd.bundled.default_root, issue 16).
    bundled_libraries_dir: str = ""


# Issue 14 (networking): [network], read by fgd.network; the rules are in fgd.netpolicy.
class NetworkConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # False forbids `outbound` on this node: every function runs with loopback only, no bridge,
    # firewall table or forwarding is set up, and a function asking for outbound is refused.
    allow_outbound: bool = True
    # The mode of a new function that does not say (network.mode, disable_public_network).
    default_mode: Mode = "outbound"
    # Instance addresses (IPv4, private, at most /8 and at least /24); the first is the bridge's.
    subnet: str = "10.213.0.0/16"
    # Names of the daemon's bridge and nftables tables (inet and bridge families); each instance's
    # host-side veth is <veth_prefix><instance id>.
    bridge: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,15}\Z")] = "fgd0"
    table: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_]{1,32}\Z")] = "fgd"
    veth_prefix: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,4}\Z")] = "fgdv"
    # Destinations every instance may reach although the policy denies them (a broker on the LAN).
    allow: Annotated[list[Destination], Meta(max_length=1024)] = []
    # What a function's own `network.allow` may name (any project's key can create a function):
    # each of its destinations must lie within one of these (range, protocol, ports). Empty: a
    # function may allow itself nothing; only `allow` above opens the policy.
    function_allow_within: Annotated[list[Destination], Meta(max_length=1024)] = []
    # Name servers instances use; empty: those of the node's /etc/resolv.conf. Loopback ones
    # (a local stub such as systemd-resolved) are reached through the daemon's forwarder.
    resolvers: list[Annotated[str, Meta(max_length=64)]] = []
    # Tracked connections one instance may hold; new ones past it are refused.
    conntrack_limit: Annotated[int, Meta(ge=16, le=1_000_000)] = 512

    def __post_init__(self) -> None:
        try:
            subnet = ipaddress.ip_network(self.subnet)
        except ValueError:
            raise ValueError(f"[network] subnet {self.subnet!r} is not a CIDR (e.g. 10.213.0.0/16)") from None
        if subnet.version != 4 or not subnet.is_private or not 8 <= subnet.prefixlen <= 24:
            raise ValueError(f"[network] subnet {self.subnet}: an IPv4 private range between /8 and /24")
        for i, one in enumerate(self.allow):
            for other in self.allow[:i]:
                if overlap(one, other):
                    # The firewall's interval set cannot hold both: networking would be unavailable.
                    raise ValueError(
                        f"[network] allow: {one.cidr} and {other.cidr} ({one.protocol}) overlap; merge them"
                    )
        for resolver in self.resolvers:
            try:
                ipaddress.IPv4Address(resolver)
            except ValueError:
                raise ValueError(f"[network] resolvers: {resolver!r} is not an IPv4 address") from None


# Issue 12 (agencies): one named credential set of [agencies.NAME]; see fgd.agencies.
class AgencyConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    access_key: str = ""
    secret_key: str = ""
    security_token: str = ""
    auth_token: str = ""
    # A TOML file holding the four values instead (re-read when it changes); excludes them here.
    file: str = ""
    # Issue 12 review: the projects whose functions may name it; empty = every project. Agencies
    # are the node's, and a key of any project could otherwise read another team's credentials.
    projects: list[Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}\Z")]] = []

    def __post_init__(self) -> None:
        if self.file and (self.access_key or self.secret_key or self.security_token or self.auth_token):
            raise ValueError("an agency takes either file or its values, not both")


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    state_dir: str = "/var/lib/fgd"
    server: ServerConfig = ServerConfig()
    gateway: GatewayConfig = GatewayConfig()
    instances: InstanceConfig = InstanceConfig()
    logs: LogConfig = LogConfig()
    sandbox: SandboxConfig = SandboxConfig()
    packages: PackageLimits = PackageLimits()
    storage: StorageConfig = StorageConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    async_invoke: AsyncConfig = AsyncConfig()
    code_fetch: CodeFetchConfig = CodeFetchConfig()
    runtimes: RuntimesConfig = RuntimesConfig()
    # Issue 14: the instances' network (fgd.network).
    network: NetworkConfig = NetworkConfig()
    # Agency name (a function's xrole / app_xrole) -> credential set.
    agencies: dict[Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}\Z")], AgencyConfig] = {}
    # Dependency zips the operator ships to every function (owner "public"): <name>.zip or
    # <name>-<version>.zip files in this directory, registered at start.
    public_dependencies: str | None = None


class ConfigError(Exception):
    """The configuration file cannot be used; the message says why."""


def load(path: str | None, *, listen: str | None = None, state_dir: str | None = None) -> Config:
    """Load the embedded defaults, then the file if given, then the flags."""
    config = Config()
    if path:
        try:
            config = msgspec.toml.decode(Path(path).read_bytes(), type=Config)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except msgspec.ValidationError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        except msgspec.DecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    if listen:
        config = msgspec.structs.replace(config, server=msgspec.structs.replace(config.server, listen=listen))
    if state_dir:
        config = msgspec.structs.replace(config, state_dir=state_dir)
    return config


def split_host_port(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen address {listen!r} must be HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)
