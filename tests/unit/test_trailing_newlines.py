"""A value with a line break at its end is not the value without it.

Python's `$` also matches just before a string's final newline, so `re.match("^abc$", "abc\n")`
matches: every validation pattern ends in `\\Z` instead. Before, a request to
`/v2/{project}/fgs/functions/NAME/invocations%0A` ran NAME (so a path filter in front of the
daemon that refuses that path could be passed by), a `func_name=` list filter took a name with a
line break, and the signature parser took its fields with one.
"""

from __future__ import annotations

import pytest

from fgd import destinations, interpreters, keys, schedules, signing
from fgd.errors import InvalidParameter, Unauthorized
from fgd.web.api.functions import NAME_FILTER
from fgd.web.front import ASYNC_PATH, CODE_PATH, INVOKE_PATH

BASE = "/v2/default/fgs/functions/urn:fss:r:default:function:default:noop:latest"


@pytest.mark.parametrize(
    ("route", "path"),
    [(INVOKE_PATH, f"{BASE}/invocations"), (ASYNC_PATH, f"{BASE}/invocations-async"), (CODE_PATH, f"{BASE}/code")],
)
def test_a_route_does_not_match_its_path_with_a_line_break_after_it(route: object, path: str) -> None:
    assert route.match(path) is not None  # type: ignore[attr-defined]
    for end in ("\n", "\r\n", "\n\n"):
        assert route.match(path + end) is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("pattern", "good"),
    [
        (NAME_FILTER, "noop"),
        (destinations._LABEL, "example"),
        (interpreters.EXECUTABLE, "python3.11"),
        (keys.ACCESS_RE, "A" * keys.ACCESS_LENGTH),
        (signing._ACCESS_RE, "AK1"),
        (signing._SIGNATURE_RE, "a" * 64),
        (signing._HEADER_NAME_RE, "x-sdk-date"),
        (signing._HEX_HASH_RE, "A" * 64),
        (signing._DATE_RE, "20261202T040000Z"),
    ],
)
def test_a_checked_value_with_a_line_break_after_it_is_refused(pattern: object, good: str) -> None:
    assert pattern.match(good) is not None  # type: ignore[attr-defined]
    assert pattern.match(good + "\n") is None  # type: ignore[attr-defined]


def test_a_signing_date_with_a_line_break_after_it_is_unauthorized() -> None:
    assert signing.parse_date("20261202T040000Z") > 0
    with pytest.raises(Unauthorized, match="malformed"):
        signing.parse_date("20261202T040000Z\n")


def test_a_rate_schedule_is_still_taken_with_spaces_around_it_but_not_with_a_break_inside() -> None:
    assert schedules.parse("Rate", " 5m\n") is not None  # the text is stripped first, as before
    with pytest.raises(InvalidParameter):
        schedules.parse("Rate", "5m\nx")
