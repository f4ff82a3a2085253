"""The FunctionGraph logger of runtimes/python/context.py, driven directly (no instance needed)."""

from __future__ import annotations

import pytest

from runtimes.python.context import RuntimeLogger, _LoggerState


@pytest.fixture
def lines() -> list[tuple[str, str]]:
    _LoggerState.level = None
    yield []
    _LoggerState.level = None


def test_a_format_string_without_arguments_is_written_as_it_is(lines: list) -> None:
    logger = RuntimeLogger(lambda level, text: lines.append((level, text)))
    logger.info("%s%s%s")
    logger.info("100%")
    logger.info("%d", "not a number")
    assert lines == [("INFO", "%s%s%s"), ("INFO", "100%"), ("INFO", "%d not a number")]


def test_a_single_mapping_argument_fills_named_fields_as_logging_does(lines: list) -> None:
    # logging.info("%(user)s logged in", {"user": "ann"}) writes "ann logged in".
    logger = RuntimeLogger(lambda level, text: lines.append((level, text)))
    logger.info("%(user)s logged in", {"user": "ann"})
    logger.warning("%(missing)s", {"user": "ann"})
    logger.info("%s", {"user": "ann"})
    assert lines == [
        ("INFO", "ann logged in"),
        ("WARN", "%(missing)s {'user': 'ann'}"),
        ("INFO", "{'user': 'ann'}"),
    ]


@pytest.mark.parametrize("level", ["garbage", None, [], 3.5, True, ""])
def test_set_level_with_garbage_raises_value_error_and_keeps_the_level(lines: list, level: object) -> None:
    logger = RuntimeLogger(lambda level, text: lines.append((level, text)))
    logger.setLevel("ERROR")
    with pytest.raises(ValueError, match="Unknown level"):
        logger.setLevel(level)
    assert logger.getLevel() == 40
