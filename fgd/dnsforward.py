"""Issue 14: a small DNS forwarder for instances when the node's resolver is a loopback stub.

A node using systemd-resolved (or dnsmasq) lists 127.0.0.53 in its resolv.conf, which an
instance cannot reach (its loopback is its own). The daemon then answers UDP queries on the
bridge address (the instances' gateway) and passes each to the node's stub, the answer back.
It answers instances only (sources in the instance range: the firewall lets nothing else in on
the bridge, and this checks again), holds at most MAX_INFLIGHT queries and MAX_PER_CLIENT of
one instance (one flooding it with names that are never answered leaves the others their
share), and gives each UPSTREAM_TIMEOUT seconds. UDP only: a truncated answer makes the client retry over TCP, which
is refused (answers over 512 bytes need EDNS, which stubs support).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging

import trio

log = logging.getLogger("fgd.dnsforward")

PORT = 53
MAX_QUERY = 4096
MAX_INFLIGHT = 1024
# One instance's share: glibc sends at most two queries at once (A and AAAA) per lookup.
MAX_PER_CLIENT = 16
UPSTREAM_TIMEOUT = 3.0


async def serve(
    listen: str,
    clients: ipaddress.IPv4Network,
    upstreams: list[str],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer queries from `clients` on `listen`:53 through `upstreams` (tried in order)."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        try:
            await sock.bind((listen, PORT))
        except OSError as exc:
            # The daemon serves on: instances of outbound functions just cannot resolve names.
            log.error("cannot run the DNS forwarder for instances on %s:%d: %s", listen, PORT, exc)
            task_status.started()
            return
        limiter = trio.CapacityLimiter(MAX_INFLIGHT)
        # In-flight queries per instance address.
        pending: dict[str, int] = {}
        log.info("DNS forwarder for instances on %s:%d -> %s", listen, PORT, ", ".join(upstreams))
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                query, peer = await sock.recvfrom(MAX_QUERY)
                if ipaddress.IPv4Address(peer[0]) not in clients or peer[0] == listen or len(query) < 12:
                    continue
                if limiter.available_tokens == 0 or pending.get(peer[0], 0) >= MAX_PER_CLIENT:
                    continue  # flooded: dropped, the client retries
                pending[peer[0]] = pending.get(peer[0], 0) + 1
                nursery.start_soon(_forward_counted, sock, query, peer, upstreams, limiter, pending)


async def _forward_counted(
    sock: trio.socket.SocketType,
    query: bytes,
    peer: tuple,
    upstreams: list[str],
    limiter: trio.CapacityLimiter,
    pending: dict[str, int],
) -> None:
    try:
        await _forward(sock, query, peer, upstreams, limiter)
    finally:
        left = pending[peer[0]] - 1
        if left:
            pending[peer[0]] = left
        else:
            del pending[peer[0]]


async def _forward(
    sock: trio.socket.SocketType, query: bytes, peer: tuple, upstreams: list[str], limiter: trio.CapacityLimiter
) -> None:
    async with limiter:
        for upstream in upstreams:
            answer = await _ask(upstream, query)
            if answer is not None:
                # The answer's id is the query's own (the upstream echoes it).
                with contextlib.suppress(OSError):
                    await sock.sendto(answer, peer)
                return


async def _ask(upstream: str, query: bytes) -> bytes | None:
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as out:
        try:
            await out.connect((upstream, PORT))
            await out.send(query)
            with trio.move_on_after(UPSTREAM_TIMEOUT):
                while True:
                    answer = await out.recv(MAX_QUERY)
                    if answer[:2] == query[:2]:
                        return answer
        except OSError as exc:
            log.debug("DNS upstream %s: %s", upstream, exc)
    return None
