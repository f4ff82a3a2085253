"""fgd.invoker.check_event: an event is a JSON document, checked once without being built."""

from __future__ import annotations

import pytest

from fgd.errors import InvalidParameter
from fgd.invoker import check_event


@pytest.mark.parametrize(
    "event",
    [b'{"a": "\xff"}', b'"\xc3"', b'{"a": 1} trailing', b"{", b"nul", b"[" * 100_000, b"\xff{}"],
    ids=["bad-utf8-in-string", "cut-utf8", "trailing", "cut", "bad-literal", "deep", "bad-utf8-outside"],
)
def test_an_event_that_is_not_a_json_document_is_refused(event: bytes) -> None:
    with pytest.raises(InvalidParameter):
        check_event(event)


@pytest.mark.parametrize("event", [b'{"a": "h\xc3\xa9"}', b"[1, 2.5, null, true]", b'"text"', b"  {}  "])
def test_a_json_document_is_passed_on_unchanged(event: bytes) -> None:
    assert check_event(event) is event


def test_an_empty_body_is_an_empty_object() -> None:
    assert check_event(b"") == b"{}"
