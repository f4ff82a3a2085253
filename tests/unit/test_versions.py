"""Alias routing rules (fgd.versions): header rules and weights, without a daemon."""

from __future__ import annotations

import pytest

from fgd.model import AliasRecord, CreateAlias, VersionStrategy, VersionStrategyRule, convert
from fgd.versions import default_version_name, rules_match


def strategy(combine: str, *rules: tuple[str, str, str]) -> VersionStrategy:
    return VersionStrategy(
        combine_type=combine,  # type: ignore[arg-type]
        rules=[VersionStrategyRule(rule_type="Header", param=p, op=op, value=v) for p, op, v in rules],  # type: ignore[arg-type]
    )


def headers(**values: str):
    lowered = {k.replace("_", "-").lower(): v for k, v in values.items()}
    return lowered.get


@pytest.mark.parametrize(
    ("rule", "given", "matched"),
    [
        (("X-Canary", "=", "yes"), {"x_canary": "yes"}, True),
        (("X-Canary", "=", "yes"), {"x_canary": " yes "}, True),
        (("X-Canary", "=", "yes"), {"x_canary": "YES"}, False),
        (("X-Canary", "=", "yes"), {}, False),
        (("x-user", "in", "alice, bob,carol"), {"x_user": "bob"}, True),
        (("x-user", "in", "alice,bob"), {"x_user": "alice,bob"}, False),
        (("x-user", "in", "alice,bob"), {"x_user": "mallory"}, False),
    ],
)
def test_one_rule(rule: tuple[str, str, str], given: dict, matched: bool) -> None:
    assert rules_match(strategy("or", rule), headers(**given)) is matched


def test_and_needs_all_or_needs_one() -> None:
    rules = (("a", "=", "1"), ("b", "=", "2"))
    assert rules_match(strategy("and", *rules), headers(a="1", b="2"))
    assert not rules_match(strategy("and", *rules), headers(a="1"))
    assert rules_match(strategy("or", *rules), headers(b="2"))
    assert not rules_match(strategy("or", *rules), headers(c="3"))


@pytest.mark.parametrize("weight", [-1, 101, 30.5, "30", True, None, 10**40])
def test_weights_are_integers_from_0_to_100(weight: object) -> None:
    from fgd.errors import InvalidParameter

    with pytest.raises(InvalidParameter):
        convert({"name": "prod", "version": "v1", "additional_version_weights": {"v2": weight}}, CreateAlias, "alias")


def test_additional_is_the_one_named() -> None:
    alias = AliasRecord(name="a", version="v1", additional_version_weights={"v2": 5}, created=0, last_modified=0)
    assert alias.additional == "v2"
    assert AliasRecord(name="a", version="v1", created=0, last_modified=0).additional == ""


def test_default_version_name() -> None:
    assert default_version_name(0) == "v19700101-000000"
