"""Settings: file, environment overrides, and clear start-up errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jitgate.config import load_settings
from jitgate.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("JITGATE_"):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    s = load_settings()
    assert s.control.listen == "127.0.0.1:8700"
    assert s.gateway.url == "http://127.0.0.1:8701"
    assert s.database.startswith("sqlite:///")
    assert s.database.endswith("jitgate.db")
    assert s.revocation.max_staleness.total_seconds() == 2


def test_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "jitgate.yaml"
    cfg.write_text("gateway: {listen: 127.0.0.1:9001}\nrevocation: {max_staleness: 500}\n")
    monkeypatch.setenv("JITGATE_GATEWAY__LISTEN", "127.0.0.1:9002")
    s = load_settings(cfg)
    assert s.gateway.listen == "127.0.0.1:9002"  # environment wins
    assert s.revocation.max_staleness.total_seconds() == 500


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("gateway: {listen: nowhere}\n", "gateway.listen: expected HOST:PORT"),
        ("no_such_key: 1\n", "no_such_key: unknown setting"),
        ("revocation: {max_staleness: soon}\n", "revocation.max_staleness: invalid duration"),
        ("gateway: {clock_skew: 10s}\n", "gateway.clock_skew: at most 5s"),
        ("- a list\n", "must be a mapping"),
        ("gateway: {listen: [\n", "not valid YAML"),
    ],
)
def test_bad_file_names_file_and_key(tmp_path: Path, content: str, needle: str) -> None:
    cfg = tmp_path / "jitgate.yaml"
    cfg.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert needle in info.value.detail
    assert str(cfg) in info.value.detail


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_settings(tmp_path / "absent.yaml")


def test_bad_environment_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JITGATE_CONTROL__LISTEN", "8700")
    with pytest.raises(ConfigError, match=r"control\.listen"):
        load_settings()
