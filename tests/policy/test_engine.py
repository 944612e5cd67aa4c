"""The policy engine: first covering rule decides, with a reason for every rule it passed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from jitgate.domain.models import Api, Injection, InjectionKind, Outcome, Principal, PrincipalKind
from jitgate.domain.scopes import parse_scopes
from jitgate.policy import (
    DEMO_POLICY_PATH,
    Subject,
    eligible_steps,
    evaluate,
    load_policy,
    parse_policy,
)
from jitgate.policy.engine import NO_COVERING_RULE

POLICY = parse_policy(
    """\
version: 1
rules:
  - name: ops-reads
    requesters: {principals: [olga]}
    apis: [payments]
    scopes: ["GET /v1/**"]
    max_duration: 2h
    approval: auto
  - name: eng-reads
    requesters: {groups: [engineering]}
    apis: [payments, billing]
    scopes: ["GET /v1/charges/*", "GET /v1/customers/**"]
    max_duration: 30m
    approval: auto
  - name: eng-writes
    requesters: {groups: [engineering], principals: [olga]}
    apis: [payments]
    scopes: ["POST,PUT /v1/**"]
    max_duration: 1h
    approval: {count: 2, from: {groups: [payments-owners, security]}}
  - name: sre-anything
    requesters: {groups: [sre]}
    apis: ["*"]
    scopes: ["* /**"]
    max_duration: 8h
    approval: {count: 1, from: {groups: [sre-leads]}}
""",
    "policy.yaml",
)


def _principal(pid: str, *groups: str, disabled: bool = False) -> Principal:
    return Principal(pid, PrincipalKind.USER, pid.title(), frozenset(groups), disabled=disabled)


def _api(name: str, environment: str = "staging") -> Api:
    return Api(name, f"https://{name}.example", Injection(InjectionKind.HEADER), environment)


def _subject(
    pid: str, groups: tuple[str, ...], api: str, scopes: list[str], minutes: int
) -> Subject:
    return Subject(
        _principal(pid, *groups), _api(api), parse_scopes(scopes), timedelta(minutes=minutes), NOON
    )


NOON = datetime(2026, 1, 5, 12, tzinfo=UTC)  # a Monday, within business hours
UTC_ZONE = ZoneInfo("UTC")

PEOPLE = {
    "alice": ("engineering",),
    "olga": (),
    "sam": ("sre",),
    "sue": ("engineering", "sre"),
    "mallory": ("sales",),
}
APPROVE, DENY, NEEDS = Outcome.APPROVE, Outcome.DENY, Outcome.NEEDS_APPROVAL

# (id, who, api, scopes joined by "|", minutes, outcome, deciding rule, rules examined)
CASES = [
    ("principal match", "olga", "payments", "GET /v1/x", 60, APPROVE, "ops-reads", 1),
    ("group match", "alice", "payments", "GET /v1/charges/c", 10, APPROVE, "eng-reads", 2),
    ("any listed api", "alice", "billing", "GET /v1/customers/c/n", 10, APPROVE, "eng-reads", 2),
    # olga's write is outside ops-reads' ceiling, so the next rules are read.
    ("scope outside: next", "olga", "payments", "POST /v1/x", 10, NEEDS, "eng-writes", 3),
    # every scope must lie inside one rule: GET is eng-reads', POST eng-writes'.
    ("whole request", "alice", "payments", "GET /v1/charges/c|POST /v1/x", 10, DENY, None, 4),
    ("apis *", "sam", "anything", "DELETE /", 60, NEEDS, "sre-anything", 4),
    ("no rule", "mallory", "payments", "GET /v1/x", 5, DENY, None, 4),
    # eng-reads covers and decides, although sre-anything would allow 8h.
    ("too long: no fall-through", "sue", "payments", "GET /v1/charges/c", 31, DENY, "eng-reads", 2),
    ("exactly the limit", "alice", "payments", "GET /v1/charges/c", 30, APPROVE, "eng-reads", 2),
]


@pytest.mark.parametrize(
    ("who", "api", "scopes", "minutes", "outcome", "rule", "examined"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_first_covering_rule_decides(
    who: str,
    api: str,
    scopes: str,
    minutes: int,
    outcome: Outcome,
    rule: str | None,
    examined: int,
) -> None:
    evaluation = evaluate(POLICY, _subject(who, PEOPLE[who], api, scopes.split("|"), minutes))
    decision = evaluation.decision
    assert (decision.outcome, decision.rule) == (outcome, rule), decision.reasons
    assert len(evaluation.trace) == examined
    assert decision.policy_version == POLICY.digest
    if rule is not None:
        assert evaluation.trace[-1].rule == rule
        assert evaluation.trace[-1].matched
    assert all(not t.matched for t in evaluation.trace[:-1])


def test_trace_says_why_each_rule_did_not_match() -> None:
    evaluation = evaluate(
        POLICY, _subject("alice", ("engineering",), "payments", ["DELETE /v1/x"], 5)
    )
    assert [(t.rule, t.line, t.matched, t.reason) for t in evaluation.trace] == [
        ("ops-reads", 3, False, "requester alice is not among principals [olga]"),
        (
            "eng-reads",
            9,
            False,
            "scope 'DELETE /v1/x' is not inside the ceiling "
            "['GET /v1/charges/*', 'GET /v1/customers/**']",
        ),
        (
            "eng-writes",
            15,
            False,
            "scope 'DELETE /v1/x' is not inside the ceiling ['POST,PUT /v1/**']",
        ),
        ("sre-anything", 21, False, "requester alice is not in groups [sre]"),
    ]
    decision = evaluation.decision
    assert decision.outcome is Outcome.DENY
    assert decision.reasons[0] == NO_COVERING_RULE
    assert (
        decision.reasons[1]
        == "rule ops-reads (line 3): requester alice is not among principals [olga]"
    )
    assert len(decision.reasons) == 5


def test_api_and_mixed_requester_reasons() -> None:
    trace = evaluate(POLICY, _subject("mallory", ("sales",), "payments", ["GET /v1/x"], 5)).trace
    assert trace[2].reason == (
        "requester mallory is not among principals [olga] nor in groups [engineering]"
    )
    trace = evaluate(
        POLICY, _subject("alice", ("engineering",), "ledger", ["GET /v1/charges/c"], 5)
    ).trace
    assert trace[1].reason == "api ledger not in [billing, payments]"


def test_needs_approval_carries_count_and_groups() -> None:
    decision = evaluate(
        POLICY, _subject("alice", ("engineering",), "payments", ["PUT /v1/x"], 60)
    ).decision
    assert decision.outcome is Outcome.NEEDS_APPROVAL
    assert decision.approvals_required == 2
    assert decision.approver_groups == frozenset({"payments-owners", "security"})
    assert decision.reasons == (
        "rule eng-writes needs approval: 2 from groups [payments-owners, security]",
    )
    assert decision.risk.score > 0


def test_too_long_names_the_limit_and_is_never_shortened() -> None:
    evaluation = evaluate(
        POLICY, _subject("alice", ("engineering",), "payments", ["GET /v1/charges/c"], 45)
    )
    assert evaluation.decision.outcome is Outcome.DENY
    assert evaluation.decision.reasons == ("rule eng-reads allows at most 30m; 45m was requested",)
    assert evaluation.trace[-1].matched


@pytest.mark.parametrize(
    ("subject", "reason"),
    [
        (
            Subject(
                _principal("alice", "engineering"), _api("payments"), (), timedelta(minutes=5), NOON
            ),
            "the request names no scope",
        ),
        (
            Subject(
                _principal("alice", "engineering", disabled=True),
                _api("payments"),
                parse_scopes(["GET /v1/charges/c"]),
                timedelta(minutes=5),
                NOON,
            ),
            "principal alice is disabled",
        ),
        (
            Subject(
                _principal("alice", "engineering"),
                _api("payments"),
                parse_scopes(["GET /v1/charges/c"]),
                timedelta(0),
                NOON,
            ),
            "the requested duration must be positive",
        ),
    ],
)
def test_fails_closed_on_degenerate_requests(subject: Subject, reason: str) -> None:
    evaluation = evaluate(POLICY, subject)
    assert evaluation.decision.outcome is Outcome.DENY
    assert evaluation.decision.reasons == (reason,)
    assert evaluation.trace == ()


@pytest.mark.parametrize(
    ("scopes", "minutes", "outcome"),
    [
        (["GET /items"], 15, Outcome.APPROVE),
        (["GET /items/1", "HEAD /items"], 5, Outcome.APPROVE),
        (["GET /items"], 16, Outcome.DENY),
        (["POST /items", "DELETE /items/1"], 60, Outcome.NEEDS_APPROVAL),
        (["POST /items"], 61, Outcome.DENY),
        (["OPTIONS /items"], 5, Outcome.DENY),
    ],
)
def test_demo_policy(scopes: list[str], minutes: int, outcome: Outcome) -> None:
    demo = load_policy(DEMO_POLICY_PATH)
    decision = evaluate(demo, _subject("alice", ("engineering",), "demo", scopes, minutes)).decision
    assert decision.outcome is outcome, decision.reasons


ALICE_PUT = _subject("alice", ("engineering",), "payments", ["PUT /v1/x"], 60)
DECISION = evaluate(POLICY, ALICE_PUT).decision


@pytest.mark.parametrize(
    ("approver", "reason"),
    [
        (_principal("bob", "security"), None),
        (_principal("carol", "payments-owners", "sales"), None),
        (
            _principal("alice", "engineering", "security"),
            "requesters cannot approve their own request",
        ),
        (
            _principal("dave", "engineering"),
            "approver dave is not eligible: step approval: not groups [payments-owners, security]",
        ),
        (_principal("erin", "security", disabled=True), "approver erin is disabled"),
    ],
)
def test_approver_eligible(approver: Principal, reason: str | None) -> None:
    steps, why = eligible_steps(DECISION, approver, ALICE_PUT, UTC_ZONE)
    assert why == reason
    assert steps == (frozenset({0}) if reason is None else frozenset())


def test_nobody_approves_a_decision_that_needs_no_approval() -> None:
    olga = _subject("olga", (), "payments", ["GET /v1/x"], 5)
    decided = evaluate(POLICY, olga).decision
    _, reason = eligible_steps(decided, _principal("bob", "security"), olga, UTC_ZONE)
    assert reason == "the request does not await approval (approve)"
