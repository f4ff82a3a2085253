"""The pure parts of the seccomp profile: masked-comparison sets and profile building."""

from __future__ import annotations

import random

import pytest

from sandbox.seccomp import PROFILES, TIOCLINUX, TIOCSTI, allow_all_but, build


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
