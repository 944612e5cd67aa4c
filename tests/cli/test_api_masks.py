"""``jitgate api add --mask``: response masks declared from the command line."""

from __future__ import annotations

import json

import pytest

from tests.cli.conftest import Cli, one_line_error

ADD = ("api", "add", "payments", "--base-url", "https://pay.example.com")


def test_api_add_declares_masks_shown_in_the_api_json(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JITGATE_API_SECRET", "sk_cli_masks_never_printed")
    out = cli.ok("admin", *ADD, "--mask", "$.card.number", "--mask", "$.items[*].ssn")
    assert out.splitlines() == [
        "API payments registered: https://pay.example.com",
        "masked in JSON responses: $.card.number, $.items[*].ssn",
    ]
    apis = {a["name"]: a for a in json.loads(cli.ok("alice", "api", "list", "-o", "json"))}
    assert apis["payments"]["masks"] == ["$.card.number", "$.items[*].ssn"]
    assert apis["demo"]["masks"] == []


def test_api_add_with_a_bad_mask_is_one_clear_error(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JITGATE_API_SECRET", "sk_cli_masks_never_printed")
    refused = cli("admin", *ADD, "--mask", "$[?@.number]")
    assert refused.exit_code == 1
    assert "no filters" in one_line_error(refused)
    names = [a["name"] for a in json.loads(cli.ok("alice", "api", "list", "-o", "json"))]
    assert names == ["demo"]


def test_api_set_masks_replaces_and_removes_them(cli: Cli) -> None:
    out = cli.ok("admin", "api", "set-masks", "demo", "--mask", "$.card.number")
    assert out == "masks of demo: $.card.number\n"
    apis = {a["name"]: a for a in json.loads(cli.ok("alice", "api", "list", "-o", "json"))}
    assert apis["demo"]["masks"] == ["$.card.number"]
    assert cli.ok("admin", "api", "set-masks", "demo") == "demo has no masks\n"
    refused = cli("alice", "api", "set-masks", "demo", "--mask", "$.x")
    assert "only an administrator" in one_line_error(refused)
