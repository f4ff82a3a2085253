"""Configuration: embedded defaults, TOML file, flags on top."""

from __future__ import annotations

import pytest

from fgd.config import Config, ConfigError, load, split_host_port


def test_defaults_need_no_file() -> None:
    config = load(None)
    assert config == Config()
    assert config.server.listen == "127.0.0.1:8900"
    assert config.state_dir == "/var/lib/fgd"
    assert config.server.region == "local"


def test_file_then_flags(tmp_path) -> None:
    path = tmp_path / "fgd.toml"
    path.write_text('state_dir = "/srv/fgd"\n[server]\nregion = "edge-1"\nlisten = "0.0.0.0:1"\n')
    config = load(str(path), listen="127.0.0.1:2")
    assert config.state_dir == "/srv/fgd"
    assert config.server.region == "edge-1"
    assert config.server.listen == "127.0.0.1:2"
    assert load(str(path), state_dir="/x").state_dir == "/x"


@pytest.mark.parametrize(
    ("content", "words"),
    [("[server]\nshutdown_grace = 'soon'\n", "server.shutdown_grace"), ("x = 1\n", "x"), ("[[", "TOML")],
)
def test_bad_files_name_the_problem(tmp_path, content: str, words: str) -> None:
    path = tmp_path / "fgd.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=words):
        load(str(path))


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(str(tmp_path / "nope.toml"))


@pytest.mark.parametrize(("text", "expected"), [("127.0.0.1:80", ("127.0.0.1", 80)), ("[::1]:9", ("::1", 9))])
def test_listen_addresses(text: str, expected: tuple) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize("text", ["localhost", "host:port", "h:99999"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ConfigError):
        split_host_port(text)
