"""``jitgate policy check`` and ``jitgate policy explain`` (offline, and against a server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jitgate.policy import DEMO_POLICY_PATH
from tests.cli.conftest import Cli, one_line_error, run

DEMO = str(DEMO_POLICY_PATH)
GOOD_RULE = (
    "  - name: reads\n"
    "    requesters: {groups: [engineering]}\n"
    "    apis: [demo]\n"
    "    scopes: ['GET /v1/**']\n"
    "    max_duration: 15m\n"
    "    approval: auto\n"
)


def test_check_accepts_the_demo_policy() -> None:
    result = run("policy", "check", DEMO)
    assert result.exit_code == 0, result.stderr
    assert f"{DEMO}: ok, 4 rule(s)" in result.stdout


@pytest.mark.parametrize(
    ("name", "text", "line", "words"),
    [
        ("bad-scope", GOOD_RULE.replace("GET /v1/**", "GET /v1/**/x"), 6, ["scopes[0]"]),
        ("bad-method", GOOD_RULE.replace("GET /v1/**", "FETCH /v1"), 6, ["FETCH"]),
        ("bad-duration", GOOD_RULE.replace("15m", "forever"), 7, ["max_duration"]),
        ("unknown-key", GOOD_RULE + "    colour: blue\n", 9, ["colour", "unknown key"]),
        ("missing-approval", GOOD_RULE.replace("    approval: auto\n", ""), 3, ["approval"]),
        ("zero-approvals", GOOD_RULE.replace("auto", "{count: 0, from: {groups: [a]}}"), 8, []),
        ("yaml-syntax", GOOD_RULE.replace("[demo]", "[demo"), 6, ["YAML"]),
        ("duplicate-key", GOOD_RULE + "    apis: [other]\n", 9, ["duplicate"]),
    ],
)
def test_check_refuses_a_bad_policy_naming_file_and_line(
    tmp_path: Path, name: str, text: str, line: int, words: list[str]
) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text("version: 1\nrules:\n" + text)
    result = run("policy", "check", str(path))
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"error: {path}:{line}: "), first
    for word in words:
        assert word in first, first


def test_check_names_a_missing_file(tmp_path: Path) -> None:
    result = run("policy", "check", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 1
    assert "nope.yaml" in one_line_error(result)


def explain(*args: str) -> tuple[int, str]:
    result = run("policy", "explain", DEMO, "--api", "demo", "--environment", "dev", *args)
    assert "Traceback" not in result.stdout + result.stderr
    return result.exit_code, result.stdout + result.stderr


def test_explain_offline_shows_the_deciding_rule() -> None:
    code, out = explain(
        "--principal", "alice", "--group", "engineering", "-s", "GET /v1/x", "--for", "10m"
    )
    assert code == 0
    assert out.startswith("decision: approve (rule demo-read-self-service), 10m requested")
    assert " => demo-read-self-service (line " in out


def test_explain_offline_shows_the_approvals_a_write_needs() -> None:
    code, out = explain(
        "--principal", "alice", "--group", "engineering", "-s", "POST /v1/orders", "--for", "30m"
    )
    assert code == 0
    assert "decision: needs_approval (rule demo-writes-need-approval)" in out
    assert "approval step approval: 1 from approvers" in out
    assert "risk: " in out


def test_explain_offline_denies_an_uncovered_request_with_every_rules_reason() -> None:
    code, out = explain(
        "--principal", "mallory", "--group", "sales", "-s", "GET /v1/x", "--for", "10m"
    )
    assert code == 0
    assert "decision: deny (rule -)" in out
    for rule in (
        "demo-read-self-service",
        "demo-writes-need-approval",
        "demo-approvers-low-risk",
        "demo-approvers-two-step",
    ):
        assert f"{rule} (line" in out
    assert "requester mallory is not in groups [approvers]" in out
    assert " => " not in out
    assert "not consulted" not in out


def test_explain_lists_the_rules_after_the_deciding_one_as_not_consulted() -> None:
    code, out = explain(
        "--principal", "alice", "--group", "engineering", "-s", "GET /v1/x", "--for", "5m"
    )
    assert code == 0
    assert " => demo-read-self-service (line" in out
    assert "demo-approvers-two-step (line" in out
    assert out.count("not consulted") == 3


def test_explain_json() -> None:
    code, out = explain(
        "--principal", "alice", "--group", "engineering", "-s", "GET /v1/x", "--for", "5m", "-o",
        "json",
    )  # fmt: skip
    assert code == 0
    document = json.loads(out)
    assert document["decision"]["outcome"] == "approve"
    assert document["decision"]["rule"] == "demo-read-self-service"
    assert document["trace"][0]["matched"] is True
    assert all(isinstance(t["line"], int) for t in document["trace"])


@pytest.mark.parametrize(
    ("spelled", "canonical", "outcome"),
    [
        ("90s", "1m30s", "approve"),
        ("15m", "15m", "approve"),
        ("900", "15m", "approve"),
        ("1h", "1h", "deny"),
        ("1h30m", "1h30m", "deny"),
        ("5400", "1h30m", "deny"),
    ],
)
def test_durations_are_read_in_every_documented_spelling(
    spelled: str, canonical: str, outcome: str
) -> None:
    code, out = explain(
        "--principal", "alice", "--group", "engineering", "-s", "GET /v1/x", "--for", spelled
    )
    assert code == 0
    assert f"decision: {outcome} " in out
    assert f"{canonical} requested" in out
    if outcome == "deny":
        assert "15m" in out, "the denial names the rule's maximum"


@pytest.mark.parametrize("spelled", ["10x", "0", "-5m", "1h1h", "15 m", ""])
def test_bad_durations_are_a_clear_error(spelled: str) -> None:
    result = run(
        "policy", "explain", DEMO, "--principal", "alice", "--api", "demo", "--group", "x",
        "--environment", "dev", "-s", "GET /x", "--for", spelled,
    )  # fmt: skip
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "duration" in line
    assert repr(spelled) in line


def test_explain_reads_groups_and_environment_from_the_server(cli: Cli) -> None:
    out = cli.ok(
        "bob", "policy", "explain", DEMO, "--principal", "alice", "--api", "demo", "-s",
        "DELETE /v1/orders/1", "--for", "10m",
    )  # fmt: skip
    assert "decision: needs_approval (rule demo-writes-need-approval)" in out
