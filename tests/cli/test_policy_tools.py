"""``jitgate policy test`` (exit codes 0, 1, 2) and ``jitgate policy replay`` (through the
in-process control plane)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jitgate.clock import FrozenClock
from jitgate.policy import DEMO_POLICY_PATH
from jitgate.services.context import Context
from tests.cli.conftest import Cli, one_line_error, run
from tests.control.test_policy_replay import BAD_CANDIDATE, BAD_LINE, CANDIDATE, file_history

DEMO = str(DEMO_POLICY_PATH)
TABLE = """\
principals:
  alice: {groups: [engineering]}
apis:
  demo: {environment: dev}
defaults: {principal: alice, api: demo, at: 2026-01-05T10:00:00Z, for: 10m}
cases:
  - name: reads are self-service
    scopes: ["GET /v1/items"]
    expect: {outcome: approve, rule: demo-read-self-service}
  - name: writes need an approver
    scopes: ["POST /v1/orders"]
    expect: {outcome: needs_approval, approvals_required: 1}
"""
WRONG = TABLE.replace("approvals_required: 1", "approvals_required: 2")


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_policy_test_passes_when_every_case_holds(tmp_path: Path) -> None:
    result = run("policy", "test", DEMO, write(tmp_path, "table.yaml", TABLE))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "pass  reads are self-service: approve (rule demo-read-self-service, risk 0)"
    )
    assert lines[1].startswith("pass  writes need an approver: needs_approval (")
    assert lines[2].startswith("2 passed, 0 failed (policy ")


def test_policy_test_exits_1_and_says_what_differed(tmp_path: Path) -> None:
    table = write(tmp_path, "table.yaml", WRONG)
    result = run("policy", "test", DEMO, table)
    assert result.exit_code == 1
    failed = result.stdout.splitlines()[1]
    assert failed.startswith(f"FAIL  writes need an approver ({table}:10): "), failed
    assert "approvals required: expected 2, got 1" in failed
    assert "got needs_approval (rule demo-writes-need-approval, 1 approval(s)" in failed
    assert "reasons: rule demo-writes-need-approval needs approval" in failed
    assert result.stdout.splitlines()[-1].startswith("1 passed, 1 failed")
    as_json = run("policy", "test", DEMO, table, "--output", "json")
    assert as_json.exit_code == 1
    report = json.loads(as_json.stdout)
    assert (report["passed"], report["failed"]) == (1, 1)
    assert report["cases"][1]["failures"] == ["approvals required: expected 2, got 1"]
    assert report["cases"][1]["decision"]["outcome"] == "needs_approval"


def test_policy_test_exits_2_for_a_bad_table(tmp_path: Path) -> None:
    table = write(tmp_path, "table.yaml", TABLE.replace("principal: alice", "principal: al"))
    result = run("policy", "test", DEMO, table)
    assert result.exit_code == 2
    assert one_line_error(result).startswith(f"error: {table}:5: defaults.principal: 'al' ")
    missing = run("policy", "test", DEMO, str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 2
    assert "cannot read the table" in one_line_error(missing)


def test_policy_test_exits_1_when_the_policy_does_not_load(tmp_path: Path) -> None:
    policy = write(tmp_path, "policy.yaml", "version: 2\nrules: []\n")
    result = run("policy", "test", policy, write(tmp_path, "table.yaml", TABLE))
    assert result.exit_code == 1
    assert one_line_error(result).startswith(f"error: {policy}:1: version: ")


def test_policy_replay_prints_the_changes(
    cli: Cli, ctx: Context, clock: FrozenClock, tmp_path: Path
) -> None:
    ids = file_history(ctx, clock)
    candidate = write(tmp_path, "new.yaml", CANDIDATE)
    out = cli.ok("admin", "policy", "replay", candidate, "--since", "1d")
    assert out.startswith("6 request(s) filed since 2026-01-06T10:07:00Z re-decided under ")
    assert f"re-decided under {candidate} (digest " in out
    rows = {
        line.strip("│ ").split("│")[0].strip(): line for line in out.splitlines() if "│" in line
    }
    for kind in ("newly_auto_approved", "newly_denied", "newly_needs_approval", "rule_changed"):
        assert rows[kind].split("│")[2].strip() == "1", out
    assert "not re-decided: 1 extension" in out
    assert (
        f"  newly_auto_approved  {ids['newly_auto_approved']}  2026-01-07T10:04:00Z  alice  demo  "
        "POST /v1/orders: needs_approval (demo-writes-need-approval) -> approve (posts-at-once); "
        "rule posts-at-once approves automatically"
    ) in out.splitlines()
    report = json.loads(
        cli.ok("admin", "policy", "replay", candidate, "--since", "1d", "-o", "json")
    )
    assert report["counts"]["newly_denied"] == 1
    assert {c["request"] for c in report["changes"]} >= {ids["newly_denied"], ids["rule_changed"]}
    limited = cli.ok("admin", "policy", "replay", candidate, "--since", "1d", "--limit", "1")
    assert "… and 3 more (--limit, or --output json for all)" in limited


@pytest.mark.parametrize(
    ("who", "text", "since", "expected"),
    [
        ("alice", CANDIDATE, "30d", "[not-admin]"),
        ("admin", BAD_CANDIDATE, "30d", f"new.yaml:{BAD_LINE}: rules[1].scopes[0]: "),
        ("admin", CANDIDATE, "forever", "invalid duration 'forever'"),
    ],
)
def test_policy_replay_refusals_are_one_line(
    cli: Cli, tmp_path: Path, who: str, text: str, since: str, expected: str
) -> None:
    candidate = write(tmp_path, "new.yaml", text)
    error = one_line_error(cli(who, "policy", "replay", candidate, "--since", since))
    assert expected in error, error


def test_policy_replay_names_an_unreadable_file(cli: Cli, tmp_path: Path) -> None:
    error = one_line_error(cli("admin", "policy", "replay", str(tmp_path / "nope.yaml")))
    assert "nope.yaml: cannot read the policy file" in error
