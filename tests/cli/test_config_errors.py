"""A bad configuration stops ``jitgate up`` at once: exit 2, one line naming the source
and the key, no traceback, and no server started."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from jitgate import runner
from jitgate.config import Settings
from tests.cli.conftest import one_line_error, run


@pytest.fixture(autouse=True)
def started(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """Configuration errors must stop ``up`` before it gets to start anything."""
    started: list[Settings] = []
    monkeypatch.setattr(runner, "run", lambda settings, **_: started.append(settings))
    return started


CONFIG_CASES = [
    ("bad-yaml", "control: [unclosed\n", ["bad-yaml.yaml:2", "not valid YAML"]),
    ("tab-yaml", "control:\n\tlisten: x\n", ["tab-yaml.yaml:2", "not valid YAML"]),
    ("not-a-mapping", "- a\n- b\n", ["not-a-mapping.yaml", "mapping"]),
    ("unknown-key", "colour: blue\n", ["unknown-key.yaml", "colour", "unknown setting"]),
    (
        "unknown-nested-key",
        "gateway:\n  colour: blue\n",
        ["unknown-nested-key.yaml", "gateway.colour", "unknown setting"],
    ),
    ("bad-listen", "control:\n  listen: nope\n", ["bad-listen.yaml", "control.listen", "nope"]),
    (
        "bad-port",
        "gateway:\n  listen: 127.0.0.1:99999\n",
        ["bad-port.yaml", "gateway.listen", "HOST:PORT"],
    ),
    (
        "bad-duration",
        "revocation:\n  max_staleness: forever\n",
        ["bad-duration.yaml", "revocation.max_staleness", "forever"],
    ),
    (
        "skew-too-large",
        "gateway:\n  clock_skew: 1m\n",
        ["skew-too-large.yaml", "gateway.clock_skew", "5s"],
    ),
]


@pytest.mark.parametrize(
    ("name", "text", "expected"), [pytest.param(*c, id=c[0]) for c in CONFIG_CASES]
)
def test_a_bad_config_file_is_one_clear_line(
    tmp_path: Path, started: list[Settings], name: str, text: str, expected: list[str]
) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    result = run("up", "--config", str(path))
    assert result.exit_code == 2
    line = one_line_error(result)
    for part in expected:
        assert part in line, line
    assert started == []


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    result = run("up", "--config", str(tmp_path / "nowhere.yaml"))
    assert result.exit_code == 2
    line = one_line_error(result)
    assert "nowhere.yaml" in line
    assert "cannot read" in line


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("JITGATE_GATEWAY__CLOCK_SKEW", "10s", "gateway.clock_skew"),
        ("JITGATE_CONTROL__LISTEN", "localhost", "control.listen"),
        ("JITGATE_REVOCATION__MAX_STALENESS", "-1s", "revocation.max_staleness"),
        ("JITGATE_AUDIT__BATCH_SIZE", "many", "audit.batch_size"),
    ],
)
def test_a_bad_environment_variable_is_one_clear_line(
    started: list[Settings], variable: str, value: str, key: str
) -> None:
    result = run("up", env={variable: value})
    assert result.exit_code == 2
    line = one_line_error(result)
    assert "environment" in line
    assert key in line
    assert started == []


def test_the_environment_wins_over_the_file(tmp_path: Path, started: list[Settings]) -> None:
    path = tmp_path / "jitgate.yaml"
    path.write_text(
        "control:\n  listen: 127.0.0.1:9100\ngateway:\n  listen: 127.0.0.1:9101\n"
        "revocation: {max_staleness: 1s}\n"
    )
    result = run("up", "--config", str(path), env={"JITGATE_GATEWAY__LISTEN": "127.0.0.1:9200"})
    assert result.exit_code == 0, result.stderr
    [settings] = started
    assert settings.control.listen == "127.0.0.1:9100"
    assert settings.gateway.listen == "127.0.0.1:9200"
    assert settings.revocation.max_staleness.total_seconds() == 1
    assert settings.config == path


def test_jitgate_config_names_the_file_too(tmp_path: Path) -> None:
    path = tmp_path / "from-env.yaml"
    path.write_text("colour: blue\n")
    result = run("up", env={"JITGATE_CONFIG": str(path)})
    assert result.exit_code == 2
    assert "from-env.yaml" in one_line_error(result)


# --- errors found while starting: a real process, which must exit without serving


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], str]:
    control = f"127.0.0.1:{_free_port()}"
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("JITGATE_")},
        "JITGATE_STATE_DIR": str(tmp_path / "state"),
        "JITGATE_CONTROL__LISTEN": control,
        "JITGATE_GATEWAY__LISTEN": f"127.0.0.1:{_free_port()}",
        "JITGATE_DEMO__UPSTREAM_LISTEN": f"127.0.0.1:{_free_port()}",
        **env,
    }
    done = subprocess.run(
        [sys.executable, "-c", "from jitgate.cli.main import app; app()", "up", "--demo"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done, control


def _error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    return errors[0]


def test_a_bad_policy_file_stops_start_up_naming_file_and_line(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nrules:\n  - name: r\n    requesters: {groups: [a]}\n    apis: [demo]\n"
        "    scopes: ['GET /v1/**/x']\n    approval: auto\n"
    )
    done, _ = _start(tmp_path, JITGATE_POLICY_FILE=str(policy))
    line = _error_line(done)
    assert f"{policy}:6" in line, line
    assert "jitgate is up" not in done.stderr


def test_an_unsupported_database_stops_start_up(tmp_path: Path) -> None:
    done, _ = _start(tmp_path, JITGATE_DATABASE_URL="mysql://root@127.0.0.1/jitgate")
    line = _error_line(done)
    assert "database_url" in line
    assert "mysql" in line


def test_a_busy_control_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        listen = f"127.0.0.1:{busy.getsockname()[1]}"
        done, _ = _start(tmp_path, JITGATE_CONTROL__LISTEN=listen)
    line = _error_line(done)
    assert listen in line
    assert "jitgate is up" not in done.stderr


def test_an_unreachable_database_stops_start_up(tmp_path: Path) -> None:
    url = f"postgresql://postgres:hunter2@127.0.0.1:{_free_port()}/jitgate"
    done, _ = _start(tmp_path, JITGATE_DATABASE_URL=url)
    line = _error_line(done)
    assert "database_url: cannot use" in line
    assert "hunter2" not in done.stderr  # the password is not shown
