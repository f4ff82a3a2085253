"""The pure parts of the seccomp profile: masked-comparison sets and profile building."""

from __future__ import annotations

import errno
import random
import socket
import struct

import pyseccomp
import pytest

from sandbox.seccomp import NETLINK_ROUTE, PROFILES, TIOCLINUX, TIOCSTI, allow_all_but, build


def matches(rules: list[tuple[int, int]], value: int) -> bool:
    return any((value & mask) == expected for mask, expected in rules)


@pytest.mark.parametrize("excluded", [[TIOCSTI], [TIOCSTI, TIOCLINUX], [0, 0xFF], [7, 8, 9]])
def test_allow_all_but_matches_everything_else(excluded: list[int]) -> None:
    rules = allow_all_but(excluded)
    rng = random.Random(1)
    for value in excluded:
        assert not matches(rules, value)
        # The kernel truncates ioctl's request to 32 bits: high bits must not help.
        assert not matches(rules, value | (1 << 40))
    for _ in range(20000):
        value = rng.getrandbits(32)
        assert matches(rules, value) == (value not in excluded)
    for value in (0, 1, 0xFFFFFFFF, TIOCSTI - 1, TIOCSTI + 1):
        assert matches(rules, value) == (value not in excluded)


def test_values_differing_in_many_bits_are_refused() -> None:
    with pytest.raises(ValueError, match="too many bits"):
        allow_all_but([0, 0xFFFFFFFF])


def test_profiles_build_and_differ_by_listen() -> None:
    programs = {profile: build(profile) for profile in PROFILES}
    assert all(len(p) % 8 == 0 and len(p) > 100 * 8 for p in programs.values())
    assert programs["event"] != programs["http"]
    with pytest.raises(ValueError, match="unknown seccomp profile"):
        build("nope")


# A classic-BPF interpreter for seccomp programs: runs the exported filter on a
# seccomp_data (nr, arch, ip, args) exactly as the kernel would, so the rules
# are checked on the program that is loaded, not on how it was described.
SECCOMP_RET_ACTION = 0xFFFF0000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000


def run_filter(program: bytes, nr: int, args: tuple[int, ...] = ()) -> int:
    insns = [struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)]
    full = (list(args) + [0] * 6)[:6]
    data = struct.pack("<iIQ6Q", nr, pyseccomp.system_arch(), 0, *[a & (2**64 - 1) for a in full])
    acc = x = 0
    mem = [0] * 16
    pc = 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        cls = code & 0x07
        if cls == 0x00:  # LD
            mode = code & 0xE0
            acc = struct.unpack_from("<I", data, k)[0] if mode == 0x20 else (mem[k] if mode == 0x60 else k)
        elif cls == 0x01:  # LDX
            x = mem[k] if code & 0xE0 == 0x60 else k
        elif cls == 0x02:
            mem[k] = acc
        elif cls == 0x03:
            mem[k] = x
        elif cls == 0x04:  # ALU
            operand = x if code & 0x08 else k
            op = code & 0xF0
            ops = {
                0x00: acc + operand,
                0x10: acc - operand,
                0x40: acc | operand,
                0x50: acc & operand,
                0xA0: acc ^ operand,
                0x60: acc << operand,
                0x70: acc >> operand,
            }
            acc = (-acc if op == 0x80 else ops[op]) & 0xFFFFFFFF
        elif cls == 0x05:  # JMP
            operand = x if code & 0x08 else k
            op = code & 0xF0
            if op == 0x00:
                pc += k
                continue
            taken = {0x10: acc == operand, 0x20: acc > operand, 0x30: acc >= operand, 0x40: bool(acc & operand)}[op]
            pc += jt if taken else jf
        elif cls == 0x06:  # RET
            return acc if code & 0x18 == 0x10 else k
        elif cls == 0x07:
            if code & 0xF8 == 0x00:
                x = acc
            else:
                acc = x
        else:  # pragma: no cover - not produced by libseccomp
            raise AssertionError(f"unknown BPF instruction {code:#x}")


def nr(name: str) -> int:
    return pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)


@pytest.fixture(scope="module")
def event_program() -> bytes:
    return build("event")


def socket_call(program: bytes, family: int, kind: int, protocol: int = 0) -> int:
    return run_filter(program, nr("socket"), (family, kind, protocol))


def test_the_interpreter_sees_allowed_and_refused_calls(event_program: bytes) -> None:
    assert run_filter(event_program, nr("read"), (0, 0, 0)) == SECCOMP_RET_ALLOW
    assert run_filter(event_program, nr("mount")) == SECCOMP_RET_ERRNO | errno.EPERM
    assert run_filter(event_program, nr("clone3")) == SECCOMP_RET_ERRNO | errno.ENOSYS


@pytest.mark.parametrize(
    ("family", "kind", "protocol"),
    [
        (socket.AF_INET, socket.SOCK_STREAM, 0),
        (socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK, 0),
        (socket.AF_INET6, socket.SOCK_STREAM, 6),
        (socket.AF_UNIX, socket.SOCK_SEQPACKET, 0),
        (socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE),
        (socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE),
    ],
)
def test_ordinary_sockets_are_allowed(event_program: bytes, family: int, kind: int, protocol: int) -> None:
    assert socket_call(event_program, family, kind, protocol) == SECCOMP_RET_ALLOW


NETLINK_KOBJECT_UEVENT = 15
NETLINK_AUDIT = 9


@pytest.mark.parametrize(
    ("family", "kind", "protocol"),
    [
        (socket.AF_PACKET, socket.SOCK_RAW, 0),
        (socket.AF_PACKET, socket.SOCK_DGRAM, 0),
        # The kernel reads the family as an int: the high bits must not hide AF_PACKET.
        (socket.AF_PACKET | 1 << 32, socket.SOCK_RAW, 0),
        (socket.AF_PACKET | 1 << 32, socket.SOCK_DGRAM, 0),
        (socket.AF_VSOCK, socket.SOCK_STREAM, 0),
        (socket.AF_VSOCK | 1 << 40, socket.SOCK_STREAM, 0),
        (socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_KOBJECT_UEVENT),
        (socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_AUDIT),
        (socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_KOBJECT_UEVENT | 1 << 32),
        (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
        (socket.AF_INET6, socket.SOCK_RAW, 0),
        (socket.AF_ALG, socket.SOCK_SEQPACKET, 0),
        (socket.AF_INET | 1 << 32, socket.SOCK_RAW, 0),
    ],
)
def test_packet_vsock_netlink_and_raw_sockets_are_refused(
    event_program: bytes, family: int, kind: int, protocol: int
) -> None:
    assert socket_call(event_program, family, kind, protocol) == SECCOMP_RET_ERRNO | errno.EPERM


def test_high_bits_on_an_allowed_family_still_match_the_kernels_view(event_program: bytes) -> None:
    # AF_INET | 1 << 32 is AF_INET to the kernel: allowing it is right, and shows the comparison is 32-bit.
    assert socket_call(event_program, socket.AF_INET | 1 << 32, socket.SOCK_STREAM) == SECCOMP_RET_ALLOW


def test_pidfd_getfd_is_refused(event_program: bytes) -> None:
    assert run_filter(event_program, nr("pidfd_getfd"), (3, 0, 0)) == SECCOMP_RET_ERRNO | errno.EPERM
    assert run_filter(event_program, nr("pidfd_open"), (1, 0)) == SECCOMP_RET_ALLOW


def test_listen_only_in_the_http_profile(event_program: bytes) -> None:
    assert run_filter(event_program, nr("listen"), (3, 1)) == SECCOMP_RET_ERRNO | errno.EPERM
    assert run_filter(build("http"), nr("listen"), (3, 1)) == SECCOMP_RET_ALLOW
