"""`fgd serve`: wire the store, the runtimes, the invoker and HTTP together.

Every long-lived task belongs to one nursery here. SIGTERM or SIGINT starts a
graceful shutdown: the listener stops accepting, in-flight requests get up to
`server.shutdown_grace` seconds, then the nursery is cancelled, which kills
every instance and zygote and flushes the logs.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import signal
import socket
import sqlite3
import time
from pathlib import Path

import msgspec
import trio

from fgd import __version__, bundled, custom, dnsforward
from fgd.agencies import Agencies
from fgd.codestore import CodeStore
from fgd.config import Config, split_host_port
from fgd.dependencies import Dependencies
from fgd.dispatch import Dispatcher
from fgd.functions import Functions
from fgd.history import Sample
from fgd.interpreters import Catalogue, discover
from fgd.invoker import Invoker
from fgd.keys import Keys
from fgd.logs import LogSink
from fgd.metrics import Metrics, label_of
from fgd.network import Network, availability
from fgd.nodejs import NodeCatalogue, find_node, shim_built
from fgd.sandboxing import HostSandbox, probe
from fgd.store import Store
from fgd.triggers import Triggers
from fgd.web.api import ApiContext, create_app
from fgd.web.auth import Authenticator, load_or_create_token
from fgd.web.front import BodyBudget, Inflight, build_front
from fgd.web.gateway import build_gateway
from fgd.web.server import connection_caps, serve_http
from fgd.web.uploads import Packager
from fgd.zygote import Zygotes
from sandbox import seccomp
from sandbox.policy import Mount

log = logging.getLogger("fgd")


class StartupError(Exception):
    """The daemon cannot start; the message says what to fix."""


# The kernel's OOM killer, when the node (or the daemon's cgroup) runs out, should take an
# instance, never the daemon that serves every function. Instances raise their own score (no
# privilege needed); the daemon also lowers its own where it may (CAP_SYS_RESOURCE).
DAEMON_OOM_SCORE_ADJ = -900


def protect_from_oom_killer() -> None:
    try:
        Path("/proc/self/oom_score_adj").write_text(str(DAEMON_OOM_SCORE_ADJ))
    except OSError as exc:
        log.info("cannot lower the daemon's OOM score (%s); instances still rank above it", exc.strerror)


def prepare_state_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise StartupError(f"cannot use state directory {path}: {exc.strerror}") from None


def open_listener(host: str, port: int, listen: str) -> socket.socket:
    """Bind a listening socket ourselves, so a busy port is one clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=4096)
    except OSError as exc:
        raise StartupError(f"cannot listen on {listen}: {exc.strerror or exc}") from None


async def find_runtimes(config: Config) -> Catalogue:
    """The Python interpreters on this node and the names each serves (fgd.interpreters)."""
    interpreters = await trio.to_thread.run_sync(discover, config.runtimes)
    catalogue = Catalogue(interpreters, config.runtimes.exact_versions)
    if not catalogue.names():
        found = "; ".join(f"{i.path} ({i.version}): {i.reason}" for i in interpreters) or "none found"
        raise StartupError(f"no Python interpreter can serve functions: {found}")
    for interpreter in catalogue.in_use():
        served = [name for name in catalogue.names() if catalogue.serving(name) == interpreter]
        log.info("runtime %s: %s (Python %s)", ", ".join(served), interpreter.path, interpreter.version)
    # Issue 13 (nodejs): the Node.js names, served by the node's `node` (fgd.nodejs).
    node = await trio.to_thread.run_sync(find_node)
    catalogue.nodejs = NodeCatalogue(node, config.runtimes.exact_versions, built=shim_built())
    if catalogue.nodejs.node is not None:
        node = catalogue.nodejs.node
        log.info("runtime %s: %s (Node.js %s)", ", ".join(catalogue.nodejs.names()), node.path, node.version)
    else:
        log.info("no Node.js runtime: %s", catalogue.nodejs.refusal("Node.js20.15"))
    return catalogue


def pool_of(name: str, interpreter_key: str) -> str:
    """The pool serving runtime `name` (issue 13: Custom and http have their own, fgd.custom)."""
    return custom.POOL if custom.mode_of(name) != "python" else interpreter_key


def seccomp_programs(sandbox: HostSandbox) -> dict[str, bytes] | None:
    """Built once here and handed to every zygote (each instance loads one last)."""
    if not sandbox.protections.seccomp:
        return None
    return {profile: seccomp.build(profile) for profile in seccomp.PROFILES}


def build_sandbox(config: Config, state_dir: Path, shared_mounts: list[Mount] | None = None) -> HostSandbox:
    """Probe the host; refuse to start without a protection unless degraded mode is allowed."""
    facts = probe(config.sandbox)
    sandbox = HostSandbox(config.sandbox, facts, state_dir, shared_mounts)
    if sandbox.degraded:
        if not config.sandbox.allow_degraded:
            raise StartupError(
                "this host lacks protections fgd needs: "
                + "; ".join(sandbox.degraded)
                + ". Fix them (run as root on a kernel with namespaces, cgroups and seccomp), or set "
                "[sandbox] allow_degraded = true to run without them; `fgd doctor` shows every check"
            )
        for missing in sandbox.degraded:
            log.warning("DEGRADED: running without %s", missing)
    else:
        log.info("sandbox: %s", "; ".join(c.detail for c in facts.checks if c.name == "cgroups"))
    stale = sandbox.remove_stale_cgroups()
    if stale:
        log.info("removed %d instance cgroups left by a previous run", stale)
    return sandbox


async def serve(config: Config) -> None:
    state_dir = Path(config.state_dir).resolve()
    prepare_state_dir(state_dir)
    protect_from_oom_killer()
    host, port = split_host_port(config.server.listen)
    token = load_or_create_token(state_dir)
    store = Store(state_dir / "fgd.db")
    code = CodeStore(state_dir, config.packages)
    logs = LogSink(store, config.logs)
    # Issue 12: FunctionGraph's bundled libraries, mounted read-only into every sandbox.
    bundled_root = bundled.resolve_root(config.runtimes.bundled_libraries, config.runtimes.bundled_libraries_dir)
    shared = [Mount(str(bundled_root), bundled.SANDBOX_ROOT)] if bundled_root else []
    sandbox = build_sandbox(config, state_dir, shared)
    catalogue = await find_runtimes(config)
    # Issue 14: the bridge, the firewall tables, stale ones removed first (fgd.network).
    network = build_network(config, sandbox)
    await trio.to_thread.run_sync(network.start)
    for name in config.runtimes.preload:
        if catalogue.serving(name) is None:
            raise StartupError(f"[runtimes] preload: {catalogue.refusal(name)}")
    # One zygote per interpreter in use, each started on the first cold start that needs it.
    zygotes = Zygotes(catalogue, seccomp_programs=seccomp_programs(sandbox))
    zygotes.nodejs_bundled = config.runtimes.bundled_libraries  # Issue 13 (nodejs)
    packager = Packager(code)
    # The daemon's own name first: public dependencies are registered for it.
    default = catalogue.default_name()
    names = [default, *(n for n in catalogue.names() if n != default)] if default else catalogue.names()
    dependencies = Dependencies(store, packager, names)
    invoker = Invoker(config, zygotes, logs, store, code, sandbox, dependencies, Agencies(config.agencies))
    invoker.bundled_root = str(bundled_root) if bundled_root else None
    invoker.network = network
    functions = Functions(store, code, invoker, logs, dependencies, config.server.region, catalogue, config.code_fetch)
    functions.network_config = config.network

    def nodejs_mapping() -> list:
        return list(catalogue.nodejs.mapping.items()) if catalogue.nodejs is not None else []

    def health() -> dict:
        # A zygote not started yet is fine (it starts on first use); one being restarted is not.
        states = {i.key: zygotes.state(i) for i in catalogue.in_use()}
        # Issue 13: Custom and http functions have a zygote of their own (fgd.custom).
        own = zygotes.running.get(custom.POOL)
        states[custom.POOL] = (
            "not started"
            if own is None
            else "starting"
            if own.pid is None
            else "ready"
            if own.ready.is_set()
            else "restarting"
        )
        # Issue 13 (nodejs): the Node pools' zygotes, under each Node.js name.
        node_states = {name: zygotes.node_state(node.key) for name, node in nodejs_mapping()}
        missing = [key for key, state in [*states.items(), *node_states.items()] if state == "restarting"]
        return {
            "status": "starting" if missing else "ok",
            "degraded": sandbox.degraded,
            "version": __version__,
            "runtimes": {
                name: states[pool_of(name, interpreter.key)] for name, interpreter in catalogue.mapping.items()
            }
            | node_states,
            "interpreters": [
                {
                    "path": i.path,
                    "version": i.version,
                    "zygote": states[i.key],
                    "pid": zygotes.running[i.key].pid if states[i.key] != "not started" else None,
                }
                for i in catalogue.in_use()
            ],
            "instances": invoker.count(),
            # Per runtime name whose interpreter's zygote runs (names it serves share its pool).
            "pool": {
                name: len(invoker.pools[pool_of(name, interpreter.key)])
                for name, interpreter in catalogue.mapping.items()
                if pool_of(name, interpreter.key) in invoker.pools
            }
            # Issue 13 (nodejs): the Node pools (one per memory size), under each name their node serves.
            | {
                name: sum(len(pool) for key, pool in invoker.pools.items() if key.startswith(f"{node.key}-"))
                for name, node in nodejs_mapping()
                if any(key.startswith(f"{node.key}-") for key in invoker.pools)
            },
            "functions": len(store.functions),
            # Issue 14: whether functions can have `outbound`, and why not.
            "network": network.health(),
            # Issue 15: each step of the last cold start in ms, daemon's and instance's view (bench/cold_start.py).
            "last_cold_start": invoker.last_cold_start,
        }

    def gauges() -> dict[str, dict[str, float]]:
        states = {"idle": 0, "busy": 0}
        for instances in invoker.instances.values():
            for instance in instances:
                if instance.state.value in states:
                    states[instance.state.value] += 1
        states["pool"] = sum(len(pool) for pool in invoker.pools.values())
        return {
            "fgd_instances Function instances by state (pool: contained, not yet given a function).": {
                f'state="{state}"': count for state, count in states.items()
            },
            "fgd_queued_requests Requests waiting for a free instance.": {"": invoker.queued()},
            "fgd_async_queue_depth Asynchronous invocations waiting or running.": {"": async_depth[0]},
            # Issue 15: how well writes are grouped (transactions per event; bench/async_queue.py).
            "fgd_async_writes Asynchronous events queued, and SQLite transactions of the queue by kind.": {
                f'kind="{kind}"': count for kind, count in dispatcher.counts.items()
            },
            "fgd_memory_budget_megabytes The node's memory budget for instances, and the part in use.": {
                'kind="total"': invoker.scheduler.memory_budget_mb,
                'kind="used"': invoker.scheduler.memory_used_mb,
            },
        }

    def instances_of(key: tuple[str, str, str]) -> Sample:
        """A function's instances now, sampled into the statistics history as an invocation ends."""
        return Sample(
            running=invoker.running[key],
            instances=len(invoker.instances.get(key, ())),
            reserved=invoker.reserved_live[key],
        )

    # Refreshed by the dispatcher's loop; reading SQLite from a scrape would block the event loop.
    async_depth = [0]
    metrics = Metrics(gauges, functions=store.functions, logs=logs, instances=instances_of)
    if network.available:
        metrics.extra.append(functools.partial(network.metric_lines, label_of, store.functions.__contains__))
    dispatcher = Dispatcher(
        store, invoker, config.async_invoke, async_depth, config.server.region, on_outcome=metrics.invoked
    )
    triggers = Triggers(store, dispatcher.notify, dispatcher.full)
    functions.triggers = triggers
    triggers.qualifier_lock = functions.versions.lock
    keys = Keys(store, time.time)
    authenticator = Authenticator(token, keys, time.time)
    app = create_app(
        ApiContext(
            functions=functions,
            dependencies=dependencies,
            store=store,
            triggers=triggers,
            dispatcher=dispatcher,
            metrics=metrics,
            async_config=config.async_invoke,
            token=token,
            keys=keys,
            auth=authenticator,
            health=health,
            logs_flush=logs.flush,
            config=config,
        )
    )
    inflight = Inflight()
    front = build_front(
        app,
        functions,
        dependencies,
        invoker,
        authenticator,
        inflight,
        metrics,
        BodyBudget(config.server.max_body_memory),
        dispatcher,
        config.async_invoke,
    )

    # Both listeners run fgd.web.server: fgd's HTTP/1.1 server on h11, with its connection cap and
    # header, body, keep-alive and send timeouts ([server] and [gateway] in the config).
    listeners = [(front, open_listener(host, port, config.server.listen), config.server)]
    if config.gateway.listen:
        ghost, gport = split_host_port(config.gateway.listen)
        gateway = inflight.wrap(
            build_gateway(store, invoker, token, metrics, BodyBudget(config.gateway.max_body_memory))
        )
        listeners.append((gateway, open_listener(ghost, gport, config.gateway.listen), config.gateway))
    caps = connection_caps([limits.max_connections for _, _, limits in listeners])
    servers = [
        (app_, sock, msgspec.structs.replace(limits, max_connections=cap))
        for (app_, sock, limits), cap in zip(listeners, caps, strict=True)
    ]
    shutdown = trio.Event()

    try:
        async with trio.open_nursery() as services:
            services.start_soon(_watch_signals, shutdown)
            services.start_soon(logs.run)
            await services.start(zygotes.run)
            await services.start(invoker.run)
            for name in config.runtimes.preload:
                await zygotes.get(name)
            await dependencies.load_public(config.public_dependencies)
            services.start_soon(_collect_packages, config, store, code, dependencies, invoker)
            services.start_soon(dispatcher.run)
            services.start_soon(keys.run)
            services.start_soon(triggers.run_timers)
            services.start_soon(_refresh_traffic, network)
            if network.available and network.forwarded:
                # Issue 14: the node's resolver is a loopback stub: instances ask through the daemon.
                await services.start(dnsforward.serve, network.gateway, network.subnet, network.forwarded)
            async with trio.open_nursery() as http:
                binds = []
                for app_, sock, limits in servers:
                    binds += await http.start(
                        functools.partial(
                            serve_http,
                            app_,
                            sock,
                            limits,
                            graceful_timeout=config.server.shutdown_grace,
                            shutdown_trigger=shutdown.wait,
                        )
                    )
                log.info("fgd %s serving on %s; state in %s", __version__, ", ".join(binds), state_dir)
                log.info("admin token: %s", state_dir / "admin.token")
                # What start-up made (modules, the apps, their routes: most of the daemon's
                # objects) lives as long as the daemon: out of the collector's sight, a full
                # collection traverses only what came after. It took 25 ms with them in it, a
                # pause every few seconds under load that was the warm path's p99 (issue 15).
                gc.freeze()
                await shutdown.wait()
                # The listeners have stopped accepting; let in-flight requests finish. Their own
                # graceful wait also waits on connections still busy, so we end it.
                with trio.move_on_after(config.server.shutdown_grace):
                    await inflight.drained()
                if inflight.count:
                    log.warning(
                        "%d requests still running after %.0f s; stopping", inflight.count, config.server.shutdown_grace
                    )
                http.cancel_scope.cancel()
            services.cancel_scope.cancel()
    finally:
        invoker.kill_all()
        # Issue 14: the tables, the bridge and every instance interface go with the daemon.
        network.stop()
        sandbox.close()
        keys.flush_at_exit()
        store.close()
    log.info("fgd stopped")


def build_network(config: Config, sandbox: HostSandbox) -> Network:
    """Issue 14: whether instances can have `outbound` here; said once at start when they cannot."""
    root = os.geteuid() == 0
    available, detail = availability(config.network, root=root, namespaces=sandbox.protections.namespaces)
    if not available:
        log.warning("instance networking unavailable: %s; every function has loopback only", detail)
    return Network(config.network, available=available, detail=detail)


async def _refresh_traffic(network: Network) -> None:
    """Per-instance traffic counters for /metrics, read in a worker thread."""
    if not network.available:
        return
    while True:
        await trio.sleep(1.0)
        await trio.to_thread.run_sync(network.refresh_stats)


async def _collect_packages(
    config: Config, store: Store, code: CodeStore, dependencies: Dependencies, invoker: Invoker
) -> None:
    """Remove packages nothing refers to: no function, dependency version or live instance."""
    while True:
        await trio.sleep(config.storage.gc_interval)
        # One pass is one item: a failure (a file it cannot remove, a record it cannot read)
        # is logged and the next pass tries again; the daemon goes on serving.
        try:
            # The cutoff is read before what is in use: a package handed out since is kept (see collect).
            older_than = time.time() - config.storage.gc_grace
            in_use = store.code_in_use() | {d.code.sha256 for d in dependencies.public.values()} | invoker.code_in_use()
            removed = await trio.to_thread.run_sync(code.collect, in_use, older_than)
        except sqlite3.Error:
            raise
        except Exception:
            log.exception("collecting unreferenced packages failed; trying again in %.0f s", config.storage.gc_interval)
            continue
        if removed:
            log.info("removed %d unreferenced packages", len(removed))


async def _watch_signals(shutdown: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s; shutting down", signal.Signals(signum).name)
            shutdown.set()
            return
