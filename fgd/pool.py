"""The pre-warmed pool: generic instances forked and contained before any function needs them.

Per zygote (one per interpreter, started on first use) the pool keeps `sandbox.pool_size`
instances that are forked, in their cgroup, contained and on the network, so a cold start only
specialises one (fgd.coldstart). Instances that leave (retired, killed) are queued here until
their cgroup can be removed (the release poller).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import trio

from fgd.config import Config
from fgd.errors import Unavailable
from fgd.instance import Instance, InstanceGone, LogLimits, State
from fgd.network import Network, NetworkError
from fgd.nodejs import NodeZygote, launch_policy
from fgd.sandboxing import HostSandbox
from fgd.store import FunctionRecord
from fgd.zygote import Zygote, Zygotes, ZygoteUnavailable
from sandbox.policy import EnterPolicy

# How often instances that left are checked for a cgroup that can be removed.
RELEASE_INTERVAL = 0.1
# Issue 15: seconds a refill waits after a member was taken. Forking and containing the next one
# (the zygote's fork, PID 1's mounts, pivot and the detach of the host's tree, whose RCU grace
# period interrupts every CPU) took CPU and the event loop from the cold start that took it:
# on 2 cores its end-to-end p50 was 6.1 ms with the refill at once, 4.1 ms with it 50 ms later.
REFILL_DELAY = 0.02
# Seconds shutdown waits for killed instances to leave their cgroups, so none is left behind.
SHUTDOWN_RELEASE_WAIT = 2.0

log = logging.getLogger("fgd.pool")


class Pool:
    def __init__(self, config: Config, zygotes: Zygotes, sandbox: HostSandbox | None) -> None:
        self._config = config
        self.zygotes = zygotes
        self.sandbox = sandbox
        # Per zygote runtime: generic instances already forked and contained, waiting for a function.
        self.pools: dict[str, list[Instance]] = {}
        self._wanted: dict[str, trio.Event] = {}
        # Per zygote runtime: the memory size of the function specialised last, whose cgroup limits
        # new pool members get when they are made, so its next cold start writes none (issue 15).
        self.usual_memory: dict[str, int] = {}
        # Instances killed whose cgroup is not removed yet.
        self._releasing: list[Instance] = []
        # Set when an instance is queued for release: the poller sleeps on it while none is.
        self._to_release = trio.Event()
        # Issue 14: the instances' network (fgd.network), set by the daemon; None: loopback only.
        self.network: Network | None = None
        self._nursery: trio.Nursery | None = None
        zygotes.on_start.append(self.zygote_started)

    async def run(self, nursery: trio.Nursery) -> None:
        """Start filling and releasing in `nursery` (the invoker's, which owns every instance task)."""
        self._nursery = nursery
        for zygote in list(self.zygotes.running.values()):
            self.zygote_started(zygote)
        nursery.start_soon(self._release_cgroups)

    def stop(self) -> None:
        """Shutting down: no more background work (the nursery is closing)."""
        self._nursery = None

    def retire_all(self) -> None:
        for pool in self.pools.values():
            for instance in pool:
                self.retire(instance)
            pool.clear()

    async def drain(self) -> None:
        """Wait a moment for the killed instances' cgroups to go too, so none is left behind."""
        # The shield is outside the deadline: inside it, the deadline could not end the wait.
        with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_RELEASE_WAIT):
            while self._releasing:
                self._releasing = [i for i in self._releasing if not i.release()]
                await trio.sleep(0.02)

    # Filling -----------------------------------------------------------------------

    def zygote_started(self, zygote: Zygote) -> None:
        """A zygote's first start: from now on keep a pool of its instances."""
        if zygote.runtime in self.pools or self._nursery is None:
            return
        self.pools[zygote.runtime] = []
        self._wanted[zygote.runtime] = trio.Event()
        self._nursery.start_soon(self._fill, zygote.runtime)

    async def _fill(self, runtime: str) -> None:
        """Keep `sandbox.pool_size` contained generic instances ready for cold starts."""
        zygote = self.zygotes.running[runtime]
        pool = self.pools[runtime]
        failures = 0
        while True:
            # Instances of a zygote that died went with it.
            for instance in [i for i in pool if i.zygote_generation != zygote.generation or i.state is State.DEAD]:
                pool.remove(instance)
                self.retire(instance)
            if len(pool) >= self._config.sandbox.pool_size:
                self._wanted[runtime] = trio.Event()
                # Woken when one is taken; the timeout notices members whose zygote died.
                with trio.move_on_after(1.0):
                    await self._wanted[runtime].wait()
                if self._wanted[runtime].is_set():
                    # One was taken: let its cold start finish first (REFILL_DELAY).
                    await trio.sleep(REFILL_DELAY)
                continue
            await zygote.ready.wait()
            try:
                instance = await self.new_instance(zygote)
            except (Unavailable, InstanceGone) as exc:
                failures += 1
                log.warning("cannot fill the %s pool: %s", runtime, getattr(exc, "message", exc))
                await trio.sleep(min(5.0, 0.1 * 2**failures))
                continue
            failures = 0
            instance.state = State.IDLE
            pool.append(instance)

    def take(self, runtime: str) -> Instance | None:
        """A pooled instance of `runtime`'s zygote, or None (the pool is empty)."""
        pool = self.pools.get(runtime, [])
        zygote = self.zygotes.running[runtime]
        while pool:
            instance = pool.pop(0)
            self._wanted[runtime].set()
            if instance.state is State.IDLE and instance.zygote_generation == zygote.generation:
                return instance
            self.retire(instance)
        return None

    async def new_instance(self, zygote: Zygote, lap: Callable[[str], None] = lambda step: None) -> Instance:
        """Fork a generic instance and contain it (cgroup, namespaces, mounts). A cold start
        with the pool empty times each step with `lap` (fgd.invoker.Laps)."""
        logs = self._config.logs
        instance = Instance(
            zygote, LogLimits(logs.max_lines_per_invocation, logs.max_bytes_per_invocation), self.sandbox
        )
        try:
            with trio.fail_after(self._config.instances.spawn_timeout):
                # A zygote being restarted is back within moments: wait for it rather than fail.
                await zygote.ready.wait()
                await instance.start()
                lap("fork")
                assert self._nursery is not None
                self._nursery.start_soon(instance.pump_output)
                await instance.contain(self.usual_memory.get(zygote.runtime), lap)
                await self._attach_network(instance)
                lap("attach_network")
                if isinstance(zygote, NodeZygote):
                    # Issue 13 (nodejs): a Node pool member runs its node from the start, as its own uid.
                    await instance.launch(zygote.launch(launch_policy(self.sandbox, instance.id)))
                    lap("launch")
        except BaseException as exc:
            # Whatever stopped it (a dead zygote, a deadline, shutdown mid-start), it leaves nothing behind.
            self.retire(instance)
            if isinstance(exc, ZygoteUnavailable):
                raise Unavailable(f"cannot start an instance: {exc}") from None
            if isinstance(exc, trio.TooSlowError):
                raise Unavailable("cannot start an instance: the runtime did not answer in time") from None
            raise
        return instance

    # Leaving -----------------------------------------------------------------------

    def retire(self, instance: Instance) -> None:
        """Kill an instance and queue its cgroup for removal."""
        instance.close()
        self._releasing.append(instance)
        self._to_release.set()
        self._detach_network(instance)

    async def _release_cgroups(self) -> None:
        # A cgroup can go only once the kernel has reaped its last process; cgroup v1 gives no
        # event for that, so the instances that left are polled, and only while there are some.
        while True:
            if not self._releasing:
                self._to_release = trio.Event()
                await self._to_release.wait()
            await trio.sleep(RELEASE_INTERVAL)
            self._releasing = [i for i in self._releasing if not i.release()]

    # Issue 14: the instance's interface (fgd.network) --------------------------------

    async def _attach_network(self, instance: Instance) -> None:
        """A pooled instance gets its veth now, off the request path (a `none` function's leaves it)."""
        network = self.network
        if network is None or not network.available or self.sandbox is None or not self.sandbox.protections.namespaces:
            return
        try:
            await trio.to_thread.run_sync(network.attach, instance.id, instance.pid)
        except NetworkError as exc:
            raise InstanceGone(str(exc)) from None

    async def network_policy(self, record: FunctionRecord, instance: Instance, policy: EnterPolicy) -> EnterPolicy:
        """The function's network on the instance's interface, and what the instance enters."""
        network = self.network
        if network is None:
            return policy
        settings = record.settings
        lease = network.leases.get(instance.id)
        mode = network.mode_of(settings)
        rules = settings.network
        if rules is not None and (rules.allow or rules.bandwidth_kbps) and lease is not None and mode == "outbound":
            # Firewall elements of its own (a libnftables batch): in a worker thread.
            try:
                keep = await trio.to_thread.run_sync(network.specialize, lease, record.key, mode, rules)
            except NetworkError as exc:
                raise InstanceGone(str(exc)) from None
        else:
            keep = network.specialize(lease, record.key, mode, None)
        if lease is not None and not keep and self._nursery is not None:
            # The instance leaves its interface behind (sandbox.network): it goes in the background.
            self._nursery.start_soon(functools.partial(trio.to_thread.run_sync, network.drop_interface, lease))
        return network.enter_policy(policy, keep)

    def _detach_network(self, instance: Instance) -> None:
        network = self.network
        lease = network.leases.get(instance.id) if network is not None else None
        if lease is None:
            return
        assert network is not None
        if self._nursery is not None:
            self._nursery.start_soon(functools.partial(trio.to_thread.run_sync, network.release, lease))
        else:
            # Shutting down: Network.stop removes every interface at once after this.
            network.leases.pop(instance.id, None)
