"""Which interpreter serves each Python3.x name (fgd.interpreters), without running any."""

from __future__ import annotations

import pytest

from fgd.errors import InvalidParameter
from fgd.interpreters import Catalogue, Interpreter, _looks_like_probe, expand


def interpreter(version: str, *, usable: bool = True, origin: str = "search", path: str | None = None) -> Interpreter:
    _major, minor, _micro = (int(n) for n in version.split("."))
    return Interpreter(
        path=path or f"/opt/py{version}/bin/python3.{minor}",
        version=version,
        minor=minor,
        prefix=f"/opt/py{version}",
        origin=origin,
        usable=usable,
        reason="" if usable else "cannot run the runtime shim: ImportError: msgspec",
    )


def versions(catalogue: Catalogue) -> dict[str, str]:
    return {name: catalogue.mapping[name].version for name in catalogue.names()}


def test_each_name_is_served_by_its_minor_else_the_nearest_newer_one() -> None:
    catalogue = Catalogue([interpreter("3.9.18"), interpreter("3.12.1"), interpreter("3.13.0")])
    assert versions(catalogue) == {
        "Python3.6": "3.9.18",
        "Python3.7": "3.9.18",
        "Python3.8": "3.9.18",
        "Python3.9": "3.9.18",
        "Python3.10": "3.12.1",
        "Python3.11": "3.12.1",
        "Python3.12": "3.12.1",
        "Python3.13": "3.13.0",
    }
    assert [i.version for i in catalogue.in_use()] == ["3.9.18", "3.12.1", "3.13.0"]


def test_an_unusable_interpreter_hands_its_names_to_the_next_newer_usable_one() -> None:
    catalogue = Catalogue(
        [interpreter("3.10.13", usable=False), interpreter("3.11.7"), interpreter("3.8.18", usable=False)]
    )
    assert versions(catalogue)["Python3.10"] == "3.11.7"
    assert versions(catalogue)["Python3.6"] == "3.11.7"
    assert [i.version for i in catalogue.in_use()] == ["3.11.7"]


def test_exact_mode_serves_only_the_minors_present() -> None:
    catalogue = Catalogue([interpreter("3.9.18"), interpreter("3.12.1")], exact=True)
    assert catalogue.names() == ["Python3.9", "Python3.12"]
    with pytest.raises(InvalidParameter) as refused:
        catalogue.check("Python3.10")
    assert "exact_versions = true" in refused.value.message
    assert "3.9.18 (/opt/py3.9.18/bin/python3.9)" in refused.value.message
    assert "3.12.1 (/opt/py3.12.1/bin/python3.12)" in refused.value.message


def test_the_first_usable_one_in_order_of_preference_serves_a_minor() -> None:
    listed = interpreter("3.11.2", origin="config", path="/opt/mine/python3.11")
    daemon = interpreter("3.11.7", origin="daemon")
    catalogue = Catalogue([listed, daemon])
    assert catalogue.serving("Python3.11") == listed
    assert Catalogue([interpreter("3.11.2", origin="config", usable=False), daemon]).serving("Python3.11") == daemon


def test_python2_is_refused_saying_why() -> None:
    catalogue = Catalogue([interpreter("3.12.1")])
    with pytest.raises(InvalidParameter) as refused:
        catalogue.check("Python2.7")
    assert refused.value.status == 400
    assert "end of life" in refused.value.message and "Python 3" in refused.value.message


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("Python3.14", "needs Python 3.14 or newer"),
        ("Python3.5", "not a FunctionGraph runtime"),
        ("Python3.012", "not available on this node"),
        ("python3.12", "not available on this node"),
        ("Python3.12\n", "not available on this node"),
        ("", "not available on this node"),
        ("Python" + "9" * 5000, "not available on this node"),
        # More digits than int() converts (4,300): was a ValueError, a 500 from the API.
        ("Python3." + "9" * 5000, "not available on this node"),
        ("Python" + "3" * 5000 + ".9", "not available on this node"),
        ("Python3.\u0661\u0662", "not available on this node"),
        ("Python3.1000", "needs Python 3.1000 or newer"),
        ("Python3.11 ", "not available on this node"),
        ("Python3", "not available on this node"),
    ],
)
def test_names_nothing_serves_are_refused(name: str, words: str) -> None:
    catalogue = Catalogue([interpreter("3.13.0")])
    assert name not in catalogue.mapping
    with pytest.raises(InvalidParameter) as refused:
        catalogue.check(name)
    assert words in refused.value.message


def test_a_refusal_quotes_at_most_the_start_of_a_huge_name() -> None:
    with pytest.raises(InvalidParameter) as refused:
        Catalogue([interpreter("3.13.0")]).check("P" * 100_000)
    assert len(refused.value.message) < 1000


def test_no_usable_interpreter_serves_no_name() -> None:
    catalogue = Catalogue([interpreter("3.12.1", usable=False)])
    assert catalogue.names() == []
    assert catalogue.default_name() is None


def test_the_daemons_own_name_is_the_default() -> None:
    catalogue = Catalogue([interpreter("3.9.18"), interpreter("3.11.7", origin="daemon"), interpreter("3.12.1")])
    assert catalogue.default_name() == "Python3.11"


def test_search_patterns_expand_variables_and_home() -> None:
    environ = {"PYENV_ROOT": "/srv/pyenv", "HOME": "/home/op"}
    assert expand("$PYENV_ROOT/versions/*/bin/python3.*", environ) == "/srv/pyenv/versions/*/bin/python3.*"
    assert expand("${PYENV_ROOT}/x", environ) == "/srv/pyenv/x"
    assert expand("~/.pyenv/versions/*", environ) == "/home/op/.pyenv/versions/*"
    # Unset: the pattern is skipped rather than searched from the root.
    assert expand("$PYENV_ROOT/versions/*", {}) is None
    assert expand("~/.pyenv", {}) is None


@pytest.mark.parametrize(
    "answer",
    [
        {"version": [3, 12], "implementation": "CPython", "prefix": "/usr"},
        {"version": [3, 12, "1"], "implementation": "CPython", "prefix": "/usr"},
        {"version": [3, 12, 10**9], "implementation": "CPython", "prefix": "/usr"},
        {"version": [3, 12, 1], "implementation": 7, "prefix": "/usr"},
        {"version": [3, 12, 1], "implementation": "CPython", "prefix": "relative/path"},
        {"version": [3, 12, 1], "implementation": "CPython"},
    ],
)
def test_a_probe_answer_of_the_wrong_shape_is_not_an_interpreter(answer: dict) -> None:
    assert _looks_like_probe(answer) is False


def test_a_sandbox_binds_its_own_interpreter_not_the_daemons() -> None:
    import os
    import sys

    from fgd.zygote import interpreter_policy
    from sandbox.policy import ContainPolicy, Mount

    daemon_prefix = os.path.realpath(sys.base_prefix)
    base = ContainPolicy("/new", "/state", [Mount("/usr", "/usr"), Mount(daemon_prefix, daemon_prefix)], [], {})
    policy = interpreter_policy(base, "/opt/py3.12.1")
    assert Mount("/opt/py3.12.1", "/opt/py3.12.1") in policy.root_mounts
    assert Mount("/usr", "/usr") in policy.root_mounts
    if not daemon_prefix.startswith("/usr"):
        assert Mount(daemon_prefix, daemon_prefix) not in policy.root_mounts
    # An interpreter under a directory already bound (Debian's /usr/bin/python3.x) adds nothing.
    assert interpreter_policy(base, "/usr").root_mounts == [
        m for m in policy.root_mounts if m.source != "/opt/py3.12.1"
    ]
    # The daemon's own keeps its prefix.
    assert Mount(daemon_prefix, daemon_prefix) in interpreter_policy(base, daemon_prefix).root_mounts
