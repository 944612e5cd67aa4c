"""Decision tables (``jitgate policy test``): the format, passing and failing cases, and
bad tables refused with their line."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from jitgate.errors import ConfigError
from jitgate.policy import parse_policy
from jitgate.policy.testing import load_table, parse_table, run_table

POLICY = parse_policy(
    """\
version: 1
defaults: {time_zone: Europe/Paris}
rules:
  - name: read-only-self-service
    requesters: {groups: [engineering]}
    apis: [payments]
    scopes: ["GET /v1/**"]
    max_duration: 1h
    approval: auto
    when: 'risk.score < 40 && principal.attributes.team == "payments"'
  - name: payments-writes
    requesters: {groups: [engineering]}
    apis: [payments]
    scopes: ["POST,PUT /v1/**"]
    max_duration: 30m
    approval:
      steps:
        - {name: peer, count: 1, from: {groups: [engineering]}}
        - {name: owner, count: 1, from: {groups: [payments-owners]}}
  - name: sre-break-glass
    requesters: {groups: [sre]}
    apis: ["*"]
    scopes: ["* /**"]
    max_duration: 1h
    approval: break_glass
    reason_pattern: '^INC-[0-9]+'
""",
    "policy.yaml",
)

HEAD = """\
principals:
  alice: {groups: [engineering], attributes: {team: payments}}
  sam: {groups: [sre]}
apis:
  payments: {environment: prod, owners: [payments-owners]}
defaults: {principal: alice, api: payments, for: 15m, at: "2026-01-05T10:00:00Z"}
cases:
"""
PASSING = (
    HEAD
    + """\
  - name: reads are self-service
    scopes: ["GET /v1/charges/*"]
    reason: INC-42 debugging
    expect: {outcome: approve, rule: read-only-self-service, risk_below: 40}
  - name: writes take a peer and an owner
    scopes: ["POST /v1/refunds"]
    expect:
      outcome: needs_approval
      approvals_required: 2
      steps:
        - {name: peer, count: 1, from: {groups: [engineering]}}
        - {name: owner}
      risk_at_least: 50
  - name: reads at night are riskier and fall through
    scopes: ["GET /v1/charges/*"]
    at: 2026-01-10T02:00:00Z
    recent_denials: 3
    expect: {outcome: deny, rule: null, reason_contains: no rule covers}
  - name: break glass needs an incident
    principal: sam
    scopes: ["DELETE /v1/cache"]
    reason: INC-7 outage
    expect: {outcome: approve, break_glass: true}
  - name: break glass without an incident is denied
    principal: sam
    scopes: ["DELETE /v1/cache"]
    reason: oops
    expect: {outcome: deny, rule: sre-break-glass, reason_contains: INC-}
"""
)
NOW = datetime(2026, 1, 7, 12, tzinfo=UTC)


def test_a_table_whose_expectations_hold_passes_every_case() -> None:
    table = parse_table(PASSING, "table.yaml")
    results = run_table(POLICY, table, NOW)
    assert [(r.case.name, r.failures) for r in results] == [(case.name, ()) for case in table.cases]
    assert all(r.passed for r in results)
    assert [r.case.line for r in results] == [8, 12, 21, 26, 31]


def test_each_unmet_expectation_is_reported() -> None:
    text = (
        HEAD
        + """\
  - name: everything is wrong
    scopes: ["POST /v1/refunds"]
    expect:
      outcome: approve
      rule: read-only-self-service
      risk_below: 10
      approvals_required: 1
      steps: [{name: owner}]
      break_glass: true
      reason_contains: automatically
  - name: risk too low
    scopes: ["GET /v1/x"]
    expect: {risk_at_least: 90}
"""
    )
    wrong, low = run_table(POLICY, parse_table(text, "t.yaml"), NOW)
    assert not wrong.passed
    assert wrong.failures == (
        "outcome: expected approve, got needs_approval",
        "rule: expected read-only-self-service, got payments-writes",
        "risk: expected below 10, got 55",
        "approvals required: expected 1, got 2",
        "steps: expected [owner: ? from ?], got [peer: 1 from engineering, "
        "owner: 1 from payments-owners]",
        "break glass: expected True, got False",
        "reasons: none contains 'automatically'",
    )
    assert low.failures == ("risk: expected at least 90, got 25",)


def test_a_case_without_a_time_is_decided_at_the_time_of_the_run() -> None:
    text = HEAD.replace(', at: "2026-01-05T10:00:00Z"', "") + (
        "  - name: reads\n    scopes: ['GET /v1/x']\n    recent_denials: 1\n"
        "    expect: {outcome: approve}\n"
    )
    table = parse_table(text, "t.yaml")
    [day] = run_table(POLICY, table, datetime(2026, 1, 5, 10, tzinfo=UTC))
    [night] = run_table(POLICY, table, datetime(2026, 1, 10, 2, tzinfo=UTC))
    assert day.passed
    assert night.failures == ("outcome: expected approve, got deny",)
    assert ("off_hours", 10) in night.evaluation.decision.risk.factors


def test_load_table_reads_a_file_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "table.yaml"
    path.write_text(PASSING)
    assert load_table(path).source == str(path)
    with pytest.raises(ConfigError, match="cannot read the table"):
        load_table(tmp_path / "nope.yaml")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_table(path)


CASE = "  - name: one\n    scopes: ['GET /v1/x']\n    expect: {outcome: approve}\n"


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("", 1, ["the table is empty"]),
        ("- a\n- b\n", 1, ["a table is a mapping"]),
        (HEAD + CASE + "    colour: blue\n", 11, ["cases[0].colour", "unknown key"]),
        (HEAD + CASE.replace("GET /v1/x", "FETCH /v1/x"), 9, ["cases[0].scopes[0]", "FETCH"]),
        (HEAD + CASE + "    for: forever\n", 11, ["cases[0].for", "invalid duration"]),
        (HEAD + CASE + "    principal: alcie\n", 11, ["'alcie' is not defined", "alice, sam"]),
        (HEAD + CASE + "    api: billing\n", 11, ["cases[0].api", "'billing'"]),
        (HEAD + CASE + "    at: 2026-01-05 10:00:00\n", 11, ["needs a time zone"]),
        (HEAD + CASE + "    at: 2026-01-05\n", 11, ["cases[0].at", "date and time"]),
        (HEAD + CASE + "    at: soon\n", 11, ["invalid time 'soon'"]),
        (HEAD + CASE.replace("{outcome: approve}", "{}"), 10, ["cases[0].expect"]),
        (HEAD + CASE.replace("approve}", "allow}"), 10, ["cases[0].expect.outcome"]),
        (HEAD + CASE + CASE, 11, ["duplicate case name 'one' (first at line 8)"]),
        (HEAD + CASE + "    recent_denials: -1\n", 11, ["recent_denials"]),
        (HEAD + CASE + "    scopes: []\n", 11, ["duplicate key"]),
        (HEAD.replace("for: 15m, ", "") + CASE, 8, ["cases[0].for", "is missing"]),
        (HEAD.replace("principal: alice, ", "") + CASE, 8, ["cases[0].principal", "missing"]),
        (HEAD.replace("{principal: alice", "{principal: bob") + CASE, 6, ["defaults.principal"]),
        (HEAD + CASE.replace("[", "[[", 1), 10, ["invalid YAML"]),
        (HEAD + "  - !!python/name:os.system\n", 8, ["tag"]),
        (HEAD + "  - !custom {name: x}\n", 8, ["unsupported YAML tag"]),
    ],
)
def test_a_bad_table_is_refused_naming_file_and_line(
    text: str, line: int, words: list[str]
) -> None:
    assert parse_table(HEAD + CASE, "t.yaml").cases  # what the bad tables start from is valid
    with pytest.raises(ConfigError) as caught:
        parse_table(text, "t.yaml")
    first = caught.value.detail.splitlines()[0]
    assert first.startswith(f"t.yaml:{line}: "), caught.value.detail
    for word in words:
        assert word in caught.value.detail, caught.value.detail


def test_every_problem_of_a_table_is_listed_in_line_order() -> None:
    text = HEAD + CASE + "    principal: alcie\n" + CASE.replace("one", "two") + "    api: x\n"
    with pytest.raises(ConfigError) as caught:
        parse_table(text, "t.yaml")
    lines = caught.value.detail.splitlines()
    assert [line.split(":")[1] for line in lines] == ["11", "15"]
