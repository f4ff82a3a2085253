"""Containment of one instance, in order. The order is the documentation.

`contain` is the generic half, run when a pooled instance is made, in the
process the zygote forked as PID 1 of a new pid namespace: it returns only in
the worker, PID 2, and PID 1 stays as the sandbox's reaper, exiting like the
worker; the zygote reaps PID 1 and reports that status (issue 15: no waiter
process outside the namespace any more).
`enter` is the specific half, run in the worker when it is given a workload.
Either raises `ContainmentFailed` in whichever process a step failed.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable

from sandbox import capabilities, credentials, fds, mounts, namespaces, network, reaper, rlimits, seccomp
from sandbox.policy import ContainPolicy, EnterPolicy


class ContainmentFailed(Exception):
    """A containment step failed; the message names it."""


def _step(name: str, action, *args) -> None:
    try:
        action(*args)
    except OSError as exc:
        raise ContainmentFailed(f"{name}: {exc}") from None


def contain(policy: ContainPolicy) -> None:
    """Steps 2-4. Called after the parent has put this process into its cgroup (step 1)."""
    enabled = policy.protections
    if not enabled.namespaces:
        # No pid namespace, so no PID 1 of ours to exec: the zygote's descriptor of fgd-pid1 must
        # not stay with the worker (with `fds` off too, nothing else would close it; attacker pass).
        reaper.forget_native()
        return
    # 2. New mount, net, ipc, uts and cgroup namespaces. The pid namespace is already ours: the
    # zygote forked us as its PID 1 (after step 1, so the cgroup namespace's root is our cgroup).
    if os.getpid() != 1:
        raise ContainmentFailed("namespaces: the zygote could not fork this instance into a new pid namespace")
    _step("namespaces", namespaces.enter_new_namespaces)
    # Our parent (the zygote) is outside the new pid namespace, so getppid() reads 0 here.
    capabilities.die_with_parent(0)
    # 3. A new root on tmpfs with read-only binds of the runtime's host directories.
    if enabled.mounts:
        _step(
            "mounts",
            mounts.build_root,
            policy.new_root,
            policy.root_mounts,
            policy.symlinks,
            policy.etc_files,
            policy.sources,
            policy.shared_trees,
        )
    # 4. Hostname and loopback (network mode "none").
    _step("hostname", namespaces.set_hostname, policy.hostname)
    _step("loopback", network.loopback_up)
    # Early, while nothing depends on it: the bounding set only limits what could be gained later
    # (PID 1 keeps root's other capabilities: it mounts nothing more, but reaps and exits).
    if enabled.capabilities:
        _step("capabilities", capabilities.drop_bounding)
    worker = os.fork()
    if worker:
        # PID 1 of the sandbox: holds nothing, reaps orphans, exits with the worker (as the
        # native fgd-pid1 it execs, or itself if it cannot).
        reaper.run_pid1(worker)
    reaper.forget_native()
    capabilities.die_with_parent(1)


def prepare(policy: ContainPolicy, seccomp_programs: Iterable[bytes] = ()) -> None:
    """Step 5, in a contained worker waiting in the pool (issue 15): what specialisation would do
    the same for every workload, done ahead: its own copies of the per-instance /etc files,
    which `enter` then only rewrites, and the ctypes array type each seccomp program is loaded
    through (made once per length, it cost more than the kernel's load of the filter).
    Optional: `enter` does without (a start with the pool empty skips it), and a failure here
    only leaves more for `enter` to do."""
    for program in seccomp_programs:
        # What seccomp.load makes first; ctypes keeps array types by item type and length.
        _ = seccomp._SockFilter * (len(program) // ctypes.sizeof(seccomp._SockFilter))
    if policy.protections.namespaces and policy.protections.mounts:
        try:
            mounts.stage_etc(policy.etc_files)
        except OSError:
            mounts.forget_staged_etc()


def enter(policy: EnterPolicy, keep: set[int], seccomp_program: bytes | None) -> None:
    """Steps 3 (the workload's read-only binds) and 5-9, in the worker.

    Each step is applied whenever its own protection is on, whatever the others
    are: a host without namespaces still gets the uid, no capabilities, the
    rlimits, closed descriptors and seccomp.
    """
    enter_mounts(policy)
    drop(policy, keep, seccomp_program)


def enter_mounts(policy: EnterPolicy) -> None:
    """Step 3 and the network step, the privileged half of `enter`: the workload's binds, /etc
    user tables, /tmp size, and (network mode `none`) only loopback left.

    Issue 13: a Node.js instance's keeper runs it alone at specialise time, in the
    sandbox where its node already runs (started under `drop`).
    """
    enabled = policy.protections
    if enabled.mounts and enabled.namespaces:
        _step("mounts", mounts.enter_root, policy.binds, policy.tmp_size_mb, policy.workdir, policy.etc_files)
    if enabled.namespaces and not policy.interfaces:
        # Issue 14, network mode `none`: only loopback, whatever the pooled instance was given.
        # (Only in the instance's own network namespace: without one this is the node's.)
        _step("network", network.leave_interfaces)


def drop(policy: EnterPolicy, keep: set[int], seccomp_program: bytes | None) -> None:
    """Steps 5-9, the drop half of `enter`: uid, capabilities, rlimits, descriptors, seccomp.

    Issue 13: a Node.js pool member's launched child runs it alone, before it execs node.
    """
    enabled = policy.protections
    parent = os.getppid()
    # Root's descriptors to the staged /etc files: never the workload's (a launched child's
    # drop closes its inherited copies; the worker's enter_mounts has used and closed them).
    mounts.forget_staged_etc(keep)
    if enabled.capabilities and not capabilities.bounding_empty:
        # Needs CAP_SETPCAP, so before the uid changes (which empties the other sets anyway).
        # (A pooled worker's was emptied by its PID 1 before it was forked: step 4.)
        _step("capabilities", capabilities.drop_bounding)
    if enabled.credentials:
        # 5. The instance's own unprivileged uid and gid, no supplementary groups.
        _step("credentials", credentials.drop_to, policy.uid, policy.gid)
    # 6. no_new_privs (seccomp needs it too), no capabilities left.
    if enabled.capabilities or enabled.seccomp:
        _step("no_new_privs", capabilities.no_new_privs)
    if enabled.capabilities:
        _step("capabilities", capabilities.drop_remaining)
    # A uid change clears pdeathsig: set it again, and check the parent is still there.
    capabilities.die_with_parent(parent)
    # 7. Resource limits (processes are bounded by the pids cgroup).
    if enabled.rlimits:
        _step("rlimits", rlimits.apply, policy.nofile)
    # 8. Nothing inherited but the protocol socket and stdio.
    if enabled.fds:
        fds.close_all_but({0, 1, 2, *keep})
    # 9. seccomp last: everything above needed system calls it denies.
    if enabled.seccomp and seccomp_program is not None:
        _step("seccomp", seccomp.load, seccomp_program)
