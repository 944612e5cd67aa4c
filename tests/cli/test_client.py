"""Talking to a control plane: login and profiles, and the errors people will meet."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path

import pytest

from tests.cli.conftest import SERVER, Cli, one_line_error, run


def test_login_checks_the_token_and_stores_it_privately(cli: Cli, tmp_path: Path) -> None:
    token = cli.tokens["alice"]
    result = run("--profile", "alice", "login", "--server", SERVER + "/", "--token", token)
    assert result.exit_code == 0, result.stderr
    assert "logged in to" in result.stdout
    assert "as alice (profile alice" in result.stdout
    assert token not in result.stdout
    config = tmp_path / "cli.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert json.loads(config.read_text())["profiles"]["alice"] == {"server": SERVER, "token": token}
    me = run("--profile", "alice", "whoami")
    assert json.loads(me.stdout)["id"] == "alice"


def test_login_from_the_demo_token_file(cli: Cli) -> None:
    tokens = cli.state_dir / "demo-tokens.json"
    for name in ("bob", "admin"):
        result = run(
            "--profile", name, "login", "--server", SERVER, "--token-file", str(tokens),
            "--key", name,
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
    assert json.loads(run("--profile", "bob", "whoami").stdout)["id"] == "bob"
    assert json.loads(run("--profile", "admin", "whoami").stdout)["is_admin"] is True


def test_login_with_a_wrong_token_is_a_clear_error_and_stores_nothing(
    cli: Cli, tmp_path: Path
) -> None:
    result = run("login", "--server", SERVER, "--token", "jgp_not-a-real-token")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "401" in line
    assert "unknown, expired or revoked" in line
    assert "jgp_not-a-real-token" not in line
    assert not (tmp_path / "cli.json").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--token", "jgp_x", "--token-file", "f"], ["exactly one"]),
        ([], ["exactly one"]),
        (["--token-file", "/nonexistent/tokens.json"], ["cannot read", "tokens.json"]),
    ],
)
def test_login_argument_errors(cli: Cli, args: list[str], words: list[str]) -> None:
    result = run("login", "--server", SERVER, *args)
    assert result.exit_code in (1, 2)
    line = one_line_error(result)
    for word in words:
        assert word in line


def test_login_names_a_missing_key_in_a_token_file(cli: Cli) -> None:
    tokens = str(cli.state_dir / "demo-tokens.json")
    result = run("login", "--server", SERVER, "--token-file", tokens, "--key", "mallory")
    assert result.exit_code == 1
    assert "mallory" in one_line_error(result)


def test_an_unreachable_server_is_a_clear_error() -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    for args in (["requests"], ["grants", "--active"], ["audit", "verify"]):
        result = run("--server", url, "--token", "jgp_x", *args)
        assert result.exit_code == 1
        line = one_line_error(result)
        assert f"cannot reach the jitgate server at {url}" in line
    login = run("login", "--server", url, "--token", "jgp_x")
    assert login.exit_code == 1
    assert "cannot reach" in one_line_error(login)


def test_not_logged_in_says_how_to_log_in() -> None:
    result = run("--profile", "ops", "requests")
    assert result.exit_code == 1
    message = one_line_error(result)
    assert "jitgate --profile ops login" in message
    assert "no profile 'ops'" in message


def test_a_corrupt_profile_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "cli.json").write_text("{not json")
    result = run("requests")
    assert result.exit_code == 1
    assert "cli.json" in one_line_error(result)


def test_a_server_error_shows_status_detail_and_code(cli: Cli) -> None:
    result = cli("alice", "token", "grt_0000000000000000")
    assert result.exit_code == 1
    assert one_line_error(result) == "error: 404: no grant 'grt_0000000000000000' [grant-not-found]"


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["request", "--help"],
        ["exec", "--help"],
        ["audit", "verify", "--help"],
        ["policy", "explain", "--help"],
        ["api", "add", "--help"],
    ],
)
def test_every_command_has_help(args: list[str]) -> None:
    result = run(*args) if args else run("--help")
    assert result.exit_code == 0
    assert "Usage" in result.stdout
