"""Every rule feature, table-driven through ``parse_policy`` + ``evaluate``.

reason_pattern, per-rule pending_ttl, break glass, approval steps (deny_count, principals
in ``from``), the ``risk:`` section, risk in ``when``, OIDC requesters, notify, and the
approver-to-step assignment of :func:`steps_met`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitgate.domain.models import (
    Api,
    ApprovalStep,
    Decision,
    Injection,
    InjectionKind,
    Outcome,
    Principal,
    PrincipalKind,
    Risk,
)
from jitgate.domain.scopes import parse_scopes
from jitgate.errors import ConfigError
from jitgate.policy import Subject, eligible_steps, evaluate, parse_policy, steps_met
from jitgate.policy.model import Policy

NOON = datetime(2026, 1, 7, 12, tzinfo=UTC)  # a Wednesday, business hours in UTC
APPROVE, DENY, NEEDS = Outcome.APPROVE, Outcome.DENY, Outcome.NEEDS_APPROVAL
GITHUB = "https://token.actions.githubusercontent.com"

POLICY_TEXT = f"""\
version: 1
defaults: {{max_duration: 1h, pending_ttl: 12h}}
rules:
  - name: ticketed
    requesters: {{groups: [engineering]}}
    apis: [payments]
    scopes: ["PATCH /v1/**"]
    reason_pattern: '\\b(INC|CHG)-[0-9]+\\b'
    approval: auto
  - name: slow-review
    requesters: {{groups: [engineering]}}
    apis: [payments]
    scopes: ["PUT /v1/**"]
    pending_ttl: 2h
    notify: {{slack_channel: "#payments-access"}}
    approval:
      steps:
        - {{name: owner, count: 1, from: {{groups: [payments-owners]}}}}
        - {{name: security, count: 2, from: {{groups: [security], principals: [sec-bot]}}}}
      deny_count: 2
  - name: plain-approval
    requesters: {{groups: [engineering]}}
    apis: [payments]
    scopes: ["DELETE /v1/**"]
    approval: {{count: 1, from: {{principals: [olga, pete]}}}}
  - name: low-risk-reads
    requesters: {{groups: [engineering]}}
    apis: ["*"]
    scopes: ["GET /**"]
    when: "risk.score < 40"
    notify: {{slack_channel: "#reads"}}
    approval: auto
  - name: risky-reads
    requesters: {{groups: [engineering]}}
    apis: ["*"]
    scopes: ["GET /**"]
    approval: {{count: 1, from: {{groups: [leads]}}}}
  - name: ci-deploy
    requesters:
      oidc: {{issuer: "{GITHUB}", claims: {{repository: acme/app, ref: refs/heads/main}}}}
    apis: [deploy]
    scopes: ["POST /v1/deployments"]
    max_duration: 20m
    approval: auto
  - name: break-glass
    requesters: {{groups: [sre]}}
    apis: ["*"]
    scopes: ["* /**"]
    notify: {{slack_channel: "#incidents"}}
    approval: break_glass
  - name: catch-all-approve
    requesters: {{groups: [engineering]}}
    apis: ["*"]
    scopes: ["* /**"]
    approval: auto
"""
POLICY = parse_policy(POLICY_TEXT, "test.yaml")


def api(name: str, environment: str = "staging") -> Api:
    return Api(name, f"https://{name}.example", Injection(InjectionKind.HEADER), environment)


def person(pid: str, *groups: str) -> Principal:
    return Principal(pid, PrincipalKind.USER, pid, frozenset(groups))


ALICE = person("alice", "engineering")
SAM = person("sam", "sre")
WORKLOAD = Principal("ci", PrincipalKind.SERVICE, "CI")


def subject(
    who: Principal = ALICE,
    target: Api | None = None,
    scopes: tuple[str, ...] = ("GET /v1/x",),
    minutes: int = 10,
    **changes: Any,
) -> Subject:
    base = Subject(
        who,
        target or api("payments"),
        parse_scopes(list(scopes)),
        timedelta(minutes=minutes),
        NOON,
    )
    return replace(base, **changes)


@dataclass(frozen=True)
class Case:
    id: str
    subject: Subject
    outcome: Outcome
    rule: str | None
    reason: str  # a fragment of the first reason
    examined: int  # rules in the trace


PATCH = ("PATCH /v1/charges/c",)
OIDC_OK = {"iss": GITHUB, "repository": "acme/app", "ref": "refs/heads/main", "sha": "abc"}
DEPLOY = api("deploy", "prod")
DEPLOYS = ("POST /v1/deployments",)

CASES = [
    Case(
        "reason-matches",
        subject(scopes=PATCH, reason="fix for INC-123"),
        APPROVE,
        "ticketed",
        "approves automatically",
        1,
    ),
    Case(
        "reason-other-prefix",
        subject(scopes=PATCH, reason="CHG-9 rollout"),
        APPROVE,
        "ticketed",
        "",
        1,
    ),
    # a mismatch denies at the rule, naming the pattern; catch-all-approve is not read
    Case(
        "reason-mismatch-no-fall-through",
        subject(scopes=PATCH, reason="just because"),
        DENY,
        "ticketed",
        "needs a reason matching '\\\\b(INC|CHG)-[0-9]+\\\\b'",
        1,
    ),
    Case(
        "reason-word-boundary",
        subject(scopes=PATCH, reason="XINC-123"),
        DENY,
        "ticketed",
        "needs a reason matching",
        1,
    ),
    Case(
        "reason-checked-after-duration",
        subject(scopes=PATCH, reason="INC-1", minutes=61),
        DENY,
        "ticketed",
        "allows at most 1h; 1h1m was requested",
        1,
    ),
    Case(
        "steps",
        subject(scopes=("PUT /v1/x",)),
        NEEDS,
        "slow-review",
        "needs approval: 1 from groups [payments-owners]; then 2 from groups [security] "
        "or principals [sec-bot]",
        2,
    ),
    Case(
        "principals-in-from",
        subject(scopes=("DELETE /v1/x",)),
        NEEDS,
        "plain-approval",
        "1 from principals [olga, pete]",
        3,
    ),
    Case("low-risk", subject(), APPROVE, "low-risk-reads", "approves", 4),
    # prod (25) + broad scope (15) = 40: not below 40, so the next rule decides
    Case(
        "risk-at-threshold",
        subject(target=api("ledger", "prod"), scopes=("GET /**",)),
        NEEDS,
        "risky-reads",
        "1 from groups [leads]",
        5,
    ),
    Case(
        "oidc-match",
        subject(WORKLOAD, DEPLOY, DEPLOYS, 20, oidc=OIDC_OK),
        APPROVE,
        "ci-deploy",
        "",
        6,
    ),
    Case(
        "oidc-wrong-issuer",
        subject(WORKLOAD, DEPLOY, DEPLOYS, oidc={**OIDC_OK, "iss": "https://gitlab.com"}),
        DENY,
        None,
        "no rule covers",
        8,
    ),
    Case(
        "oidc-wrong-claim",
        subject(WORKLOAD, DEPLOY, DEPLOYS, oidc={**OIDC_OK, "ref": "refs/heads/evil"}),
        DENY,
        None,
        "no rule covers",
        8,
    ),
    Case(
        "oidc-missing-claim",
        subject(WORKLOAD, DEPLOY, DEPLOYS, oidc={"iss": GITHUB, "repository": "acme/app"}),
        DENY,
        None,
        "no rule covers",
        8,
    ),
    Case(
        "oidc-claim-type",  # "main" is not the string the rule asks for
        subject(WORKLOAD, DEPLOY, DEPLOYS, oidc={**OIDC_OK, "ref": ["refs/heads/main"]}),
        DENY,
        None,
        "no rule covers",
        8,
    ),
    Case("oidc-none", subject(WORKLOAD, DEPLOY, DEPLOYS), DENY, None, "no rule covers", 8),
    Case(
        "oidc-too-long",
        subject(WORKLOAD, DEPLOY, DEPLOYS, 21, oidc=OIDC_OK),
        DENY,
        "ci-deploy",
        "allows at most 20m",
        6,
    ),
    Case(
        "break-glass",
        subject(SAM, api("ledger", "prod"), ("DELETE /everything",), 60),
        APPROVE,
        "break-glass",
        "break glass: granted at once, to be reviewed",
        7,
    ),
    Case(
        "catch-all",
        subject(scopes=("OPTIONS /x",)),
        APPROVE,
        "catch-all-approve",
        "approves automatically",
        8,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule_features(case: Case) -> None:
    evaluation = evaluate(POLICY, case.subject)
    decision = evaluation.decision
    assert (decision.outcome, decision.rule) == (case.outcome, case.rule), decision.reasons
    assert case.reason in decision.reasons[0]
    assert len(evaluation.trace) == case.examined, evaluation.trace
    assert decision.break_glass is (case.rule == "break-glass")
    assert (decision.pending_ttl is not None) is (case.outcome is NEEDS)


def test_oidc_mismatch_says_why() -> None:
    evaluation = evaluate(
        POLICY, subject(WORKLOAD, DEPLOY, DEPLOYS, oidc={**OIDC_OK, "ref": "refs/heads/dev"})
    )
    trace = {t.rule: t.reason for t in evaluation.trace}
    assert trace["ci-deploy"] == (
        f"requester ci is not a workload of {GITHUB} with the required claims"
    )
    assert any(
        f"rule ci-deploy (line {POLICY.rules[5].line})" in r for r in evaluation.decision.reasons
    )


def test_decision_carries_the_approval_requirement() -> None:
    decision = evaluate(POLICY, subject(scopes=("PUT /v1/x",))).decision
    assert decision.steps == (
        ApprovalStep("owner", 1, frozenset({"payments-owners"})),
        ApprovalStep("security", 2, frozenset({"security"}), frozenset({"sec-bot"})),
    )
    assert decision.deny_count == 2
    assert decision.approvals_required == 3
    assert decision.pending_ttl == timedelta(hours=2)  # the rule's, not the default 12h
    assert decision.notify == {"slack_channel": "#payments-access"}
    assert decision.as_dict()["pending_ttl_seconds"] == 7200

    other = evaluate(POLICY, subject(scopes=("DELETE /v1/x",))).decision
    assert other.pending_ttl == timedelta(hours=12)  # the policy default
    assert other.deny_count == 1
    assert other.steps == (ApprovalStep("approval", 1, principals=frozenset({"olga", "pete"})),)
    assert other.notify == {}


@pytest.mark.parametrize(
    ("case", "channel"),
    [
        (subject(), "#reads"),
        (subject(SAM, scopes=("DELETE /x",)), "#incidents"),
        (subject(scopes=("PUT /v1/x",)), "#payments-access"),
        (subject(scopes=("OPTIONS /x",)), None),
    ],
    ids=["auto", "break-glass", "needs-approval", "no-notify"],
)
def test_notify_channel_is_carried_into_the_decision(case: Subject, channel: str | None) -> None:
    decision = evaluate(POLICY, case).decision
    assert decision.notify == ({} if channel is None else {"slack_channel": channel})
    assert decision.as_dict()["notify"] == decision.notify


def test_denials_carry_no_approval_requirement_or_notify() -> None:
    decision = evaluate(POLICY, subject(scopes=PATCH, reason="no ticket")).decision
    assert decision.outcome is DENY
    assert (decision.steps, decision.pending_ttl, decision.break_glass) == ((), None, False)
    assert decision.notify == {}


# -- the risk: section ----------------------------------------------------------------

RISK_POLICY = """\
version: 1
defaults: {{time_zone: Europe/Paris}}
risk:
{risk}
rules:
  - name: any
    requesters: {{groups: [engineering]}}
    apis: ["*"]
    scopes: ["* /**"]
    max_duration: 24h
    approval: auto
"""

SATURDAY_NOON = datetime(2026, 1, 10, 11, tzinfo=UTC)  # 12:00 in Paris

RISK_CASES: list[tuple[str, str, Subject, dict[str, int]]] = [
    ("defaults", "  {}", subject(scopes=("POST /x",)), {"writes": 30}),
    ("weights", "  writes: 5\n  prod: 50", subject(scopes=("POST /x",)), {"writes": 5}),
    (
        "prod-environments",
        "  prod: 50\n  prod_environments: [production, live]",
        subject(target=api("p", "production")),
        {"prod": 50},
    ),
    ("prod-not-listed", "  prod_environments: [production]", subject(target=api("p", "prod")), {}),
    (
        "weekend-is-business",
        "  business_hours: {days: [sat, sun], start: 9, end: 17}",
        subject(now=SATURDAY_NOON),
        {},
    ),
    (
        "weekday-is-off",
        "  business_hours: {days: [sat, sun], start: 9, end: 17}",
        subject(),
        {"off_hours": 10},
    ),
    ("default-saturday-off", "  {}", subject(now=SATURDAY_NOON), {"off_hours": 10}),
    # 12:00Z is 13:00 in Paris: outside 08-13 (end is the first hour after)
    ("hours-end-exclusive", "  business_hours: {start: 8, end: 13}", subject(), {"off_hours": 10}),
    ("hours-inside", "  business_hours: {start: 8, end: 14}\n  off_hours: 40", subject(), {}),
    ("denials", "  {}", subject(recent_denials=2), {"recent_denials": 20}),
    ("denials-capped", "  {}", subject(recent_denials=9), {"recent_denials": 30}),
    (
        "denials-custom-cap",
        "  recent_denial: 20\n  recent_denials_max: 25",
        subject(recent_denials=3),
        {"recent_denials": 25},
    ),
    ("denials-zero-weight", "  recent_denial: 0", subject(recent_denials=5), {}),
    (
        "durations",
        "  long_duration: 7\n  long_duration_after: 10m",
        subject(minutes=11),
        {"long_duration": 7},
    ),
    (
        "very-long",
        "  very_long_duration: 33\n  very_long_duration_after: 2h",
        subject(minutes=121),
        {"long_duration": 33},
    ),
    ("broad", "  broad_scope: 1", subject(scopes=("GET /**",)), {"broad_scope": 1}),
    (
        "clamped",
        "  writes: 100\n  prod: 100",
        subject(target=api("p", "prod"), scopes=("POST /x",)),
        {"writes": 100, "prod": 100},
    ),
]


@pytest.mark.parametrize(
    ("risk", "case", "factors"),
    [c[1:] for c in RISK_CASES],
    ids=[c[0] for c in RISK_CASES],
)
def test_risk_section_overrides(risk: str, case: Subject, factors: dict[str, int]) -> None:
    policy = parse_policy(RISK_POLICY.format(risk=risk), "test.yaml")
    decision = evaluate(policy, case).decision
    assert dict(decision.risk.factors) == factors
    assert decision.risk.score == min(100, sum(factors.values()))


def test_recent_denials_window_is_configurable() -> None:
    policy = parse_policy(RISK_POLICY.format(risk="  recent_denials_window: 3d"), "test.yaml")
    assert policy.risk.recent_denials_window == timedelta(days=3)


@pytest.mark.parametrize(
    ("risk", "fragment"),
    [
        ("  writes: 101", "risk.writes"),
        ("  writes: -1", "risk.writes"),
        ("  writes: '5'", "risk.writes"),
        ("  bogus: 1", "risk.bogus: unknown key"),
        ("  business_hours: {days: [funday]}", "risk.business_hours.days[0]"),
        ("  business_hours: {start: 24}", "risk.business_hours.start"),
        ("  prod_environments: ['pro d']", "risk.prod_environments[0]"),
        ("  recent_denials_window: forever", "risk.recent_denials_window"),
    ],
)
def test_bad_risk_section_is_refused(risk: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_policy(RISK_POLICY.format(risk=risk), "test.yaml")
    assert caught.value.detail.startswith("test.yaml:4: "), caught.value.detail
    assert fragment in caught.value.detail


def test_risk_score_in_when_uses_the_configured_weights() -> None:
    """With writes weighing 5, a write scores below 40 and is auto-approved."""
    text = """\
version: 1
risk: {writes: 5, broad_scope: 0}
rules:
  - name: cheap
    requesters: {groups: [engineering]}
    apis: ["*"]
    scopes: ["* /**"]
    when: "risk.score < 40 && risk.factors.writes == 5"
    approval: auto
"""
    policy = parse_policy(text, "test.yaml")
    decision = evaluate(policy, subject(scopes=("POST /**",))).decision
    assert (decision.outcome, decision.risk.score) == (APPROVE, 5)
    # on prod (+25) with 4 recent denials (+30): 60, no longer below 40: no rule covers
    risky = subject(target=api("p", "prod"), scopes=("POST /x",), recent_denials=4)
    decision = evaluate(policy, risky).decision
    assert (decision.outcome, decision.risk.score) == (DENY, 60)
    assert "when is false: risk.score < 40" in decision.reasons[1]


# -- who may approve, and how approvals are assigned to steps ---------------------------

STEPS = Decision(
    outcome=NEEDS,
    rule="two-step",
    reasons=(),
    risk=Risk(0),
    steps=(
        ApprovalStep("owner", 1, frozenset({"owners"})),
        ApprovalStep("security", 1, frozenset({"security"})),
    ),
)


@pytest.mark.parametrize(
    ("eligible", "filled"),
    [
        ({}, (0, 0)),
        ({"a": frozenset({0, 1})}, (1, 0)),  # one person counts once across steps
        ({"a": frozenset({0, 1}), "b": frozenset({0})}, (1, 1)),  # a greedy a->0 would fail
        ({"a": frozenset({0}), "b": frozenset({0, 1})}, (1, 1)),
        ({"b": frozenset({1}), "a": frozenset({1, 0})}, (1, 1)),
        ({"a": frozenset({0}), "b": frozenset({0})}, (1, 0)),  # a step holds only `count`
        ({"a": frozenset({1}), "b": frozenset({1}), "c": frozenset({1})}, (0, 1)),
        ({"a": frozenset()}, (0, 0)),
    ],
)
def test_steps_met_assigns_each_person_once(
    eligible: dict[str, frozenset[int]], filled: tuple[int, int]
) -> None:
    assert steps_met(STEPS, eligible) == filled


def _best(decision: Decision, eligible: dict[str, frozenset[int]]) -> int:
    """Brute force: the most seats any assignment of approvers (or none) to steps fills."""
    people = sorted(eligible)
    best = 0
    choices = [[None, *sorted(eligible[p])] for p in people]
    for pick in itertools.product(*choices):
        load = [0] * len(decision.steps)
        for step in pick:
            if step is not None:
                load[step] += 1
        if all(n <= s.count for n, s in zip(load, decision.steps, strict=True)):
            best = max(best, sum(load))
    return best


@settings(max_examples=150, deadline=None)
@given(
    counts=st.lists(st.integers(1, 2), min_size=1, max_size=3),
    data=st.data(),
)
def test_steps_met_is_a_maximum_matching(counts: list[int], data: st.DataObject) -> None:
    decision = replace(
        STEPS,
        steps=tuple(ApprovalStep(f"s{i}", n, frozenset({"g"})) for i, n in enumerate(counts)),
    )
    indexes = list(range(len(counts)))
    eligible = data.draw(
        st.dictionaries(
            st.sampled_from(["a", "b", "c", "d"]),
            st.frozensets(st.sampled_from(indexes)),
            max_size=4,
        )
    )
    filled = steps_met(decision, eligible)
    assert all(0 <= got <= step.count for got, step in zip(filled, decision.steps, strict=True))
    assert sum(filled) == _best(decision, eligible)
    assert sum(filled) <= len([p for p, steps in eligible.items() if steps])


def test_one_person_in_both_groups_is_eligible_for_both_steps_but_counts_once() -> None:
    policy = parse_policy(POLICY_TEXT, "test.yaml")
    case = subject(scopes=("PUT /v1/x",))
    decision = evaluate(policy, case).decision
    zone = policy.defaults.time_zone
    both = person("dana", "payments-owners", "security")
    bot = person("sec-bot")
    only_security = person("sid", "security")
    assert eligible_steps(decision, both, case, zone) == (frozenset({0, 1}), None)
    assert eligible_steps(decision, bot, case, zone) == (frozenset({1}), None)
    eligible = {
        p.id: eligible_steps(decision, p, case, zone)[0] for p in (both, bot, only_security)
    }
    assert steps_met(decision, eligible) == (1, 2)  # dana must be the owner
    del eligible["sid"]
    assert steps_met(decision, eligible) == (1, 1)  # not 0 + 2: dana counts once


def test_break_glass_and_auto_decisions_accept_no_approver() -> None:
    case = subject(SAM, scopes=("DELETE /x",))
    decision = evaluate(POLICY, case).decision
    assert decision.break_glass
    steps, why = eligible_steps(decision, person("lead", "leads"), case, POLICY.defaults.time_zone)
    assert steps == frozenset()
    assert why == "the request does not await approval (approve)"


def test_rule_as_dict_round_trips_the_features() -> None:
    slow = next(r for r in POLICY.rules if r.name == "slow-review").as_dict()
    assert slow["pending_ttl_seconds"] == 7200
    assert slow["notify"] == {"slack_channel": "#payments-access"}
    assert slow["approval"]["deny_count"] == 2
    assert [s["name"] for s in slow["approval"]["steps"]] == ["owner", "security"]
    ticketed = POLICY.rules[0].as_dict()
    assert ticketed["reason_pattern"] == "\\b(INC|CHG)-[0-9]+\\b"
    ci = next(r for r in POLICY.rules if r.name == "ci-deploy").as_dict()
    assert ci["requesters"]["oidc"] == {
        "issuer": GITHUB,
        "claims": {"ref": "refs/heads/main", "repository": "acme/app"},
    }
    assert next(r for r in POLICY.rules if r.name == "break-glass").as_dict()["approval"] == (
        "break_glass"
    )


PATTERN_LINE = "reason_pattern: '\\b(INC|CHG)-[0-9]+\\b'"


def _policy_of(text: str) -> Policy:
    return parse_policy(text, "test.yaml")


@pytest.mark.parametrize(
    ("fragment", "replacement", "error"),
    [
        (PATTERN_LINE, "reason_pattern: '(unclosed'", "invalid regular"),
        (PATTERN_LINE, "reason_pattern: ''", "1-500 characters"),
        ("pending_ttl: 2h", "pending_ttl: 0s", "must be positive"),
        ("deny_count: 2", "deny_count: 0", "deny_count"),
        ('{slack_channel: "#payments-access"}', "{slack_channel: ''}", "slack_channel"),
        ('{slack_channel: "#payments-access"}', "{email: x@y}", "notify.email: unknown key"),
        (f'issuer: "{GITHUB}"', 'issuer: "http://insecure"', "issuer"),
        ("approval: break_glass", "approval: breakglass", "unknown approval 'breakglass'"),
    ],
)  # fmt: skip
def test_feature_values_are_validated(fragment: str, replacement: str, error: str) -> None:
    assert fragment in POLICY_TEXT
    with pytest.raises(ConfigError) as caught:
        _policy_of(POLICY_TEXT.replace(fragment, replacement, 1))
    assert error in caught.value.detail
    assert caught.value.detail.startswith("test.yaml:")
