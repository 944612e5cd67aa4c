"""CEL conditions: every variable the engine documents, every allowed function, time zones.

Each condition case is evaluated through ``parse_policy`` + ``evaluate`` on a policy with
two covering rules: ``guarded`` (the condition, auto approval) and ``fallback`` (needs an
approver). So a true condition approves, a false one falls through to ``fallback``, and
one that cannot be evaluated denies at ``guarded`` (fail closed), naming it, without
consulting ``fallback``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any, Literal
from zoneinfo import ZoneInfo

import pytest

from jitgate.domain.models import (
    Api,
    Injection,
    InjectionKind,
    Outcome,
    Principal,
    PrincipalKind,
)
from jitgate.domain.scopes import parse_scopes
from jitgate.errors import ConfigError
from jitgate.policy import Subject, eligible_steps, evaluate, parse_policy
from jitgate.policy.conditions import FUNCTIONS
from jitgate.policy.model import Policy

WEDNESDAY = datetime(2026, 1, 7, 10, 15, tzinfo=UTC)  # in business hours, UTC
OIDC = {"iss": "https://token.actions.githubusercontent.com", "repository": "acme/app"}

ALICE = Principal(
    "alice",
    PrincipalKind.USER,
    "Alice",
    frozenset({"engineering"}),
    {"team": "payments", "level": 3, "on_call": True},
)
PAYMENTS = Api(
    "payments",
    "https://payments.example",
    Injection(InjectionKind.HEADER),
    "prod",
    frozenset({"payments-owners"}),
)
# Risk of BASE: writes 30 + prod 25 = 55 (no broad scope, 30m, business hours).
BASE = Subject(
    principal=ALICE,
    api=PAYMENTS,
    scopes=parse_scopes(["GET /v1/charges/*", "POST /v1/refunds"]),
    duration=timedelta(minutes=30),
    now=WEDNESDAY,
    reason="INC-42 refund stuck",
    ticket="INC-42",
)


def policy_with(when: str, *, zone: str = "UTC", extra: str = "") -> Policy:
    """``guarded`` (auto, when ``when``) then ``fallback`` (one approver), both covering."""
    text = f"""\
version: 1
defaults: {{max_duration: 8h, time_zone: {zone}}}
rules:
  - name: guarded
    requesters: {{groups: [engineering, sre]}}
    apis: ["*"]
    scopes: ["* /**"]
    approval: auto
    when: {json.dumps(when)}
  - name: fallback
    requesters: {{groups: [engineering, sre]}}
    apis: ["*"]
    scopes: ["* /**"]
    approval: {{count: 1, from: {{groups: [owners]}}}}
{extra}"""
    return parse_policy(text, "test.yaml")


Result = Literal["true", "false", "error"]


def check(policy: Policy, subject: Subject, expected: Result) -> None:
    evaluation = evaluate(policy, subject)
    decision = evaluation.decision
    if expected == "true":
        assert (decision.outcome, decision.rule) == (Outcome.APPROVE, "guarded"), decision.reasons
        assert [t.rule for t in evaluation.trace] == ["guarded"]
    elif expected == "false":
        assert (decision.outcome, decision.rule) == (Outcome.NEEDS_APPROVAL, "fallback"), (
            decision.reasons
        )
        first = evaluation.trace[0]
        assert (first.rule, first.matched) == ("guarded", False)
        assert first.reason.startswith("when is false: ")
    else:
        assert (decision.outcome, decision.rule) == (Outcome.DENY, "guarded"), decision.reasons
        assert len(decision.reasons) == 1
        assert decision.reasons[0].startswith("rule guarded: its when condition failed (")
        assert decision.reasons[0].endswith("); denied")
        # fail closed and final: the approving-by-human fallback is never consulted
        assert [t.rule for t in evaluation.trace] == ["guarded"]
        assert evaluation.trace[0].matched
    assert decision.policy_version == policy.digest


@dataclass(frozen=True)
class Case:
    id: str
    when: str
    expected: Result
    changes: dict[str, Any] = field(default_factory=dict)  # replaced on BASE
    principal: dict[str, Any] = field(default_factory=dict)  # replaced on ALICE


def _subject(case: Case) -> Subject:
    subject = replace(BASE, **case.changes)
    if case.principal:
        subject = replace(subject, principal=replace(ALICE, **case.principal))
    return subject


STARTS = WEDNESDAY + timedelta(minutes=30)

CASES = [
    # request.*
    Case("api-true", 'request.api == "payments"', "true"),
    Case("api-false", 'request.api == "billing"', "false"),
    Case("scopes-true", '"POST /v1/refunds" in request.scopes', "true"),
    Case("scopes-false", "size(request.scopes) == 3", "false"),
    Case("methods-sorted", 'request.methods == ["GET", "POST"]', "true"),
    Case("methods-false", '"DELETE" in request.methods', "false"),
    Case("paths-true", 'request.paths == ["/v1/charges/*", "/v1/refunds"]', "true"),
    Case("paths-false", 'request.paths.exists(p, p.startsWith("/v2"))', "false"),
    Case("duration-true", 'request.duration == duration("30m")', "true"),
    Case("duration-false", 'request.duration <= duration("15m")', "false"),
    Case("duration-vs-int-error", "request.duration > principal.attributes.level", "error"),
    Case("reason-true", 'request.reason.matches("^INC-[0-9]+ ")', "true"),
    Case("reason-false", 'request.reason.contains("prod")', "false"),
    Case("ticket-true", 'request.ticket == "INC-42"', "true"),
    Case("ticket-null", "request.ticket == null", "true", {"ticket": None}),
    Case("ticket-null-method-error", 'request.ticket.startsWith("INC")', "error", {"ticket": None}),
    Case("starts-at-null", "request.starts_at == null", "true"),
    Case("starts-at-true", "request.starts_at > time.now", "true", {"starts_at": STARTS}),
    Case(
        "starts-at-arith",
        'request.starts_at - time.now == duration("30m")',
        "true",
        {"starts_at": STARTS},
    ),
    Case("starts-at-null-compare-error", "request.starts_at > time.now", "error"),
    Case("extension-false", "request.extension", "false"),
    Case("extension-true", "request.extension", "true", {"extension": True}),
    # principal.*
    Case("id-true", 'principal.id == "alice"', "true"),
    Case("id-false", 'principal.id == "mallory"', "false"),
    Case("kind-user", 'principal.kind == "user"', "true"),
    Case(
        "kind-service",
        'principal.kind == "user"',
        "false",
        principal={"kind": PrincipalKind.SERVICE},
    ),
    Case("groups-true", '"engineering" in principal.groups', "true"),
    Case("groups-macro-false", 'principal.groups.exists(g, g == "sre")', "false"),
    Case("attr-string", 'principal.attributes.team == "payments"', "true"),
    Case("attr-int", "principal.attributes.level >= 3", "true"),
    Case("attr-bool", "principal.attributes.on_call", "true"),
    Case("attr-has-false", "has(principal.attributes.clearance)", "false"),
    Case("attr-missing-error", 'principal.attributes.clearance == "top"', "error"),
    Case("attr-not-bool-error", "principal.attributes.team", "error"),
    Case(
        "attr-wrong-type-error",
        "principal.attributes.level > 2",
        "error",
        principal={"attributes": {"level": "3"}},
    ),
    # api.*
    Case("api-name", 'api.name == "payments"', "true"),
    Case("api-environment-true", 'api.environment == "prod"', "true"),
    Case(
        "api-environment-false",
        'api.environment == "prod"',
        "false",
        {"api": replace(PAYMENTS, environment="staging")},
    ),
    Case("api-owners", '"payments-owners" in api.owners', "true"),
    # risk.*
    Case("risk-score-true", "risk.score == 55", "true"),
    Case("risk-score-threshold-false", "risk.score < 40", "false"),
    Case(
        "risk-score-threshold-true",
        "risk.score < 40",
        "true",
        {"scopes": parse_scopes(["GET /v1/charges/*"])},  # prod only: 25
    ),
    Case("risk-factors", "risk.factors.writes == 30 && risk.factors.prod == 25", "true"),
    Case("risk-factor-absent", "has(risk.factors.off_hours)", "false"),
    Case("risk-factor-absent-error", "risk.factors.off_hours == 0", "error"),
    # time.* (UTC here; see the time-zone tests below)
    Case("now", 'time.now == timestamp("2026-01-07T10:15:00Z")', "true"),
    Case("hour-minute", "time.hour == 10 && time.minute == 15", "true"),
    Case("hour-false", "time.hour >= 17", "false"),
    Case("weekday", 'time.weekday == "wed"', "true"),
    Case("weekday-false", 'time.weekday in ["sat", "sun"]', "false"),
    Case("date", 'time.date == "2026-01-07"', "true"),
    # oidc
    Case("oidc-empty", "size(oidc) == 0", "true"),
    Case("oidc-claim", 'oidc.repository == "acme/app"', "true", {"oidc": OIDC}),
    Case("oidc-claim-false", 'oidc.repository == "acme/other"', "false", {"oidc": OIDC}),
    Case("oidc-absent-claim-error", 'oidc.repository == "acme/app"', "error"),
    # macros
    Case("all", 'request.methods.all(m, m in ["GET", "POST"])', "true"),
    Case("exists-one", 'request.scopes.exists_one(s, s.startsWith("POST "))', "true"),
    Case("map-all", "request.paths.map(p, size(p)).all(n, n > 5)", "true"),
    Case("filter", 'size(request.methods.filter(m, m == "POST")) == 0', "false"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_condition_variables(case: Case) -> None:
    check(policy_with(case.when), _subject(case), case.expected)


def test_every_documented_variable_has_a_case() -> None:
    documented = {
        "request.api",
        "request.scopes",
        "request.methods",
        "request.paths",
        "request.duration",
        "request.reason",
        "request.ticket",
        "request.starts_at",
        "request.extension",
        "principal.id",
        "principal.kind",
        "principal.groups",
        "principal.attributes",
        "api.name",
        "api.environment",
        "api.owners",
        "risk.score",
        "risk.factors",
        "time.now",
        "time.hour",
        "time.minute",
        "time.weekday",
        "time.date",
    }
    covered = {name for name in documented if any(name in case.when for case in CASES)}
    assert covered == documented
    assert any(case.when.startswith("oidc") or " oidc" in case.when for case in CASES)


# -- an error in `when` is final, even when a later rule would approve ---------------


def test_error_denies_and_later_rules_are_not_consulted() -> None:
    extra = """\
  - name: everything
    requesters: {groups: [engineering]}
    apis: ["*"]
    scopes: ["* /**"]
    approval: auto
"""
    policy = policy_with("principal.attributes.clearance == 'top'", extra=extra)
    evaluation = evaluate(policy, BASE)
    assert evaluation.decision.outcome is Outcome.DENY
    assert evaluation.rule is not None
    assert evaluation.rule.name == "guarded"
    (reason,) = evaluation.decision.reasons
    assert "rule guarded" in reason
    assert "clearance" in reason
    assert [t.rule for t in evaluation.trace] == ["guarded"]


def test_when_is_not_evaluated_for_a_rule_that_does_not_cover() -> None:
    """A broken `when` on a rule that does not cover the request cannot deny it."""
    text = """\
version: 1
rules:
  - name: other-api
    requesters: {groups: [engineering]}
    apis: [billing]
    scopes: ["* /**"]
    approval: auto
    when: 'principal.attributes.clearance == "top"'
  - name: ours
    requesters: {groups: [engineering]}
    apis: [payments]
    scopes: ["* /**"]
    approval: auto
"""
    decision = evaluate(parse_policy(text, "test.yaml"), BASE).decision
    assert (decision.outcome, decision.rule) == (Outcome.APPROVE, "ours")


# -- refused at load -----------------------------------------------------------------

LOAD_ERRORS = [
    ("duration-result", "request.duration", "not true or false"),
    ("int-result", "risk.score + 1", "not true or false"),
    ("string-result", '"yes"', "not true or false"),
    ("list-result", "request.scopes", "not true or false"),
    ("null-result", "request.starts_at", "not true or false"),
    ("reviewer-in-rule", "reviewer.id != principal.id", "unknown variable 'reviewer'"),
    ("unknown-variable", 'user.id == "alice"', "unknown variable 'user'"),
    ("unknown-variable-bare", 'env == "prod"', "unknown variable 'env'"),
    ("unknown-function", "max(1, 2) == 2", "unknown function 'max'"),
    ("unknown-method", 'request.reason.lowerAscii() == "x"', "unknown function 'lowerAscii'"),
    ("ext-function", "cel.bind(x, 1, x == 1)", "unknown variable 'cel'"),
    ("syntax", "request.api ==", "invalid CEL"),
    ("division-by-zero", "1 / 0 == 1", "division by zero"),
    ("type-mismatch", '"a" + 1 == "a1"', "string + int"),
    ("macro-name-outside-macro", "[1].exists(foo, true) && foo", "foo"),
    ("macro-smuggles-reviewer", '[1].all(reviewer, true) && reviewer.id == "x"', "reviewer"),
    ("too-long", "true || " * 300 + "true", "longer than 2000"),
    ("empty", "   ", "empty"),
]


@pytest.mark.parametrize(
    ("when", "fragment"), [c[1:] for c in LOAD_ERRORS], ids=[c[0] for c in LOAD_ERRORS]
)
def test_bad_conditions_are_refused_at_load(when: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        policy_with(when)
    detail = caught.value.detail
    assert detail.startswith("test.yaml:9: rules[0].when: "), detail
    assert fragment in detail, detail
    assert "\n" not in detail  # one problem, one line


@pytest.mark.parametrize("value", ["true", "1", "[a]", "{a: b}"])
def test_when_must_be_cel_text(value: str) -> None:
    text = f"""\
version: 1
rules:
  - name: r
    requesters: {{groups: [g]}}
    apis: [a]
    scopes: ["GET /"]
    approval: auto
    when: {value}
"""
    with pytest.raises(ConfigError) as caught:
        parse_policy(text, "test.yaml")
    assert caught.value.detail.startswith("test.yaml:8: rules[0].when: a condition is CEL text")


# -- every allowed function really works (the allow-list cannot lie) -------------------

FUNCTION_CASES = {
    "size": "size(request.scopes) == 2 && request.scopes.size() == 2",
    "contains": 'request.reason.contains("refund")',
    "startsWith": 'request.api.startsWith("pay")',
    "endsWith": 'api.name.endsWith("ments")',
    "matches": 'request.ticket.matches("^INC-[0-9]+$")',
    "string": 'string(time.minute) == "15"',
    "int": 'int("15") == time.minute',
    "uint": "uint(time.minute) == 15u",
    "double": "double(time.minute) == 15.0",
    "bytes": 'bytes(principal.id) == b"alice"',
    "duration": 'request.duration == duration("30m")',
    "timestamp": 'timestamp("2026-01-07T10:15:00Z") == time.now',
    "type": "type(time.hour) == type(1)",
    "dyn": "dyn(time.hour) == 10",
    "getFullYear": "time.now.getFullYear() == 2026",
    "getMonth": "time.now.getMonth() == 0",  # zero-based
    "getDate": "time.now.getDate() == 7",  # one-based
    "getDayOfMonth": "time.now.getDayOfMonth() == 6",  # zero-based
    "getDayOfYear": "time.now.getDayOfYear() == 6",  # zero-based
    "getDayOfWeek": "time.now.getDayOfWeek() == 3",  # Sunday = 0
    "getHours": "time.now.getHours() == 10 && request.duration.getHours() == 0",
    "getMinutes": "time.now.getMinutes() == 15 && request.duration.getMinutes() == 30",
    "getSeconds": "time.now.getSeconds() == 0",
    "getMilliseconds": "time.now.getMilliseconds() == 0",
}


def test_every_allowed_function_has_a_case() -> None:
    assert set(FUNCTION_CASES) == FUNCTIONS


@pytest.mark.parametrize("name", sorted(FUNCTION_CASES))
@pytest.mark.parametrize("negated", [False, True], ids=["holds", "negated"])
def test_allowed_function_works(name: str, negated: bool) -> None:
    when = FUNCTION_CASES[name]
    check(policy_with(f"!({when})" if negated else when), BASE, "false" if negated else "true")


# -- time zones and daylight saving time ----------------------------------------------

OFFICE_HOURS = "time.hour >= 9 && time.hour < 17"

PARIS = "Europe/Paris"


def utc(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


ZONE_CASES = [
    # 07:30Z is 08:30 in Paris in winter (UTC+1) but 09:30 in summer (UTC+2).
    ("paris-winter", PARIS, utc(1, 7, 7, 30), OFFICE_HOURS, "false"),
    ("paris-summer", PARIS, utc(7, 8, 7, 30), OFFICE_HOURS, "true"),
    ("utc-at-0730", "UTC", utc(7, 8, 7, 30), OFFICE_HOURS, "false"),
    # 15:30Z: 16:30 in Paris in winter (inside), 17:30 in summer (outside).
    ("paris-winter-late", PARIS, utc(1, 7, 15, 30), OFFICE_HOURS, "true"),
    ("paris-summer-late", PARIS, utc(7, 8, 15, 30), OFFICE_HOURS, "false"),
    # Spring forward, 29 March 2026 at 01:00Z: 00:30Z is 01:30 CET, 01:30Z is 03:30 CEST.
    ("dst-before", PARIS, utc(3, 29, 0, 30), "time.hour == 1", "true"),
    ("dst-after", PARIS, utc(3, 29, 1, 30), "time.hour == 3", "true"),
    ("dst-no-2am", PARIS, utc(3, 29, 1, 0), "time.hour == 2", "false"),
    # Fall back, 25 October 2026 at 01:00Z: 00:30Z and 01:30Z are both 02:30 local.
    ("dst-fold-first", PARIS, utc(10, 25, 0, 30), "time.hour == 2", "true"),
    ("dst-fold-second", PARIS, utc(10, 25, 1, 30), "time.hour == 2", "true"),
    # time.now stays the absolute instant (UTC), whatever the zone.
    ("now-is-utc", PARIS, utc(7, 8, 7, 30), "time.now.getHours() == 7 && time.hour == 9", "true"),
    # Friday evening in UTC is already Saturday morning in Auckland (UTC+13 in January).
    (
        "auckland-weekday",
        "Pacific/Auckland",
        utc(1, 9, 20),
        'time.weekday == "sat" && time.date == "2026-01-10" && time.hour == 9',
        "true",
    ),
    (
        "utc-weekday",
        "UTC",
        utc(1, 9, 20),
        'time.weekday == "fri" && time.date == "2026-01-09"',
        "true",
    ),
    # Negative offsets: 02:00Z on Monday is Sunday evening in New York.
    (
        "new-york-weekday",
        "America/New_York",
        utc(1, 5, 2),
        'time.weekday == "sun" && time.hour == 21',
        "true",
    ),
]


@pytest.mark.parametrize(
    ("zone", "now", "when", "expected"),
    [c[1:] for c in ZONE_CASES],
    ids=[c[0] for c in ZONE_CASES],
)
def test_time_is_local_to_the_policy_zone(
    zone: str, now: datetime, when: str, expected: Result
) -> None:
    check(policy_with(when, zone=zone), replace(BASE, now=now), expected)


@pytest.mark.parametrize(
    "tz",
    [timezone(timedelta(hours=2)), ZoneInfo("Europe/Athens"), UTC],
    ids=["fixed-offset", "zoneinfo", "utc"],
)
def test_starts_at_is_an_instant_read_in_utc(tz: tzinfo) -> None:
    """A client's offset is kept out: getHours() of the instant is UTC, as CEL says."""
    starts = datetime(2026, 1, 7, 8, 0, tzinfo=UTC).astimezone(tz)
    subject = replace(BASE, starts_at=starts)
    when = (
        "request.starts_at.getHours() == 8"
        ' && request.starts_at == timestamp("2026-01-07T08:00:00Z")'
    )
    check(policy_with(when), subject, "true")


def test_a_non_utc_now_is_read_in_the_policy_zone() -> None:
    """The caller's offset does not leak into time.hour: the same instant, same answer."""
    instant = datetime(2026, 1, 7, 7, 30, tzinfo=UTC)
    tokyo = instant.astimezone(ZoneInfo("Asia/Tokyo"))
    policy = policy_with("time.hour == 8", zone="Europe/Paris")
    check(policy, replace(BASE, now=instant), "true")
    check(policy, replace(BASE, now=tokyo), "true")


@pytest.mark.parametrize(
    ("zone", "now", "off_hours"),
    [
        ("Europe/Paris", datetime(2026, 1, 7, 7, 30, tzinfo=UTC), False),  # 08:30 local
        ("UTC", datetime(2026, 1, 7, 7, 30, tzinfo=UTC), True),  # 07:30 local
        ("Europe/Paris", datetime(2026, 1, 7, 17, 30, tzinfo=UTC), False),  # 18:30 winter
        ("Europe/Paris", datetime(2026, 7, 8, 17, 30, tzinfo=UTC), True),  # 19:30 summer
        ("UTC", datetime(2026, 7, 8, 17, 30, tzinfo=UTC), False),  # 17:30 local
    ],
)
def test_off_hours_risk_uses_the_policy_zone(zone: str, now: datetime, off_hours: bool) -> None:
    """Business hours are 08:00-19:00 local by default; the risk reads the policy's zone."""
    decision = evaluate(policy_with("true", zone=zone), replace(BASE, now=now)).decision
    assert ("off_hours" in dict(decision.risk.factors)) is off_hours, decision.risk
    check(
        policy_with("has(risk.factors.off_hours)", zone=zone),
        replace(BASE, now=now),
        "true" if off_hours else "false",
    )


# -- reviewer conditions: only inside approval steps -------------------------------------

REVIEWED = """\
version: 1
rules:
  - name: reviewed
    requesters: {groups: [engineering]}
    apis: [payments]
    scopes: ["* /**"]
    approval:
      count: 1
      from: {groups: [owners]}
      when: 'reviewer.attributes.team != principal.attributes.team'
  - name: stepped
    requesters: {groups: [sre]}
    apis: [payments]
    scopes: ["* /**"]
    approval:
      steps:
        - {name: peer, count: 1, from: {groups: [owners]}}
        - name: lead
          count: 1
          from: {groups: [owners]}
          when: '"lead" in reviewer.groups && reviewer.id != principal.id'
"""


def _reviewer(pid: str, *groups: str, **attributes: Any) -> Principal:
    return Principal(pid, PrincipalKind.USER, pid, frozenset(groups), attributes)


@pytest.mark.parametrize(
    ("reviewer", "steps", "why"),
    [
        (_reviewer("carol", "owners", team="security"), {0}, None),
        (_reviewer("bob", "owners", team="payments"), set(), "reviewer condition is false"),
        # no team attribute: the condition cannot be evaluated, so it does not count
        (_reviewer("dan", "owners"), set(), "reviewer condition failed"),
        (_reviewer("erin", "sales", team="security"), set(), "not groups [owners]"),
    ],
    ids=["other-team", "same-team", "no-attribute-fails-closed", "not-in-group"],
)
def test_reviewer_condition(reviewer: Principal, steps: set[int], why: str | None) -> None:
    policy = parse_policy(REVIEWED, "test.yaml")
    decision = evaluate(policy, BASE).decision
    assert decision.outcome is Outcome.NEEDS_APPROVAL
    assert decision.steps[0].when == "reviewer.attributes.team != principal.attributes.team"
    got, reason = eligible_steps(decision, reviewer, BASE, policy.defaults.time_zone)
    assert got == frozenset(steps)
    if why is None:
        assert reason is None
    else:
        assert reason is not None
        assert reason.startswith(f"approver {reviewer.id} is not eligible: step approval: ")
        assert why in reason


def test_reviewer_condition_per_step() -> None:
    policy = parse_policy(REVIEWED, "test.yaml")
    sam = replace(ALICE, id="sam", groups=frozenset({"sre"}))
    subject = replace(BASE, principal=sam)
    decision = evaluate(policy, subject).decision
    assert decision.rule == "stepped"
    zone = policy.defaults.time_zone
    lead = _reviewer("lena", "owners", "lead")
    plain = _reviewer("olaf", "owners")
    assert eligible_steps(decision, lead, subject, zone) == (frozenset({0, 1}), None)
    assert eligible_steps(decision, plain, subject, zone)[0] == frozenset({0})


def test_reviewer_variable_is_refused_outside_approval_steps() -> None:
    allowed = REVIEWED  # inside approval (both forms) it loads
    assert parse_policy(allowed, "test.yaml").rules[0].approval.steps[0].when is not None
    with pytest.raises(ConfigError) as caught:
        policy_with('reviewer.id != "x"')
    assert "unknown variable 'reviewer'" in caught.value.detail


def test_reviewer_condition_is_compiled_at_load() -> None:
    broken = REVIEWED.replace(
        "reviewer.attributes.team != principal.attributes.team", "reviewer.nope("
    )
    with pytest.raises(ConfigError) as caught:
        parse_policy(broken, "test.yaml")
    assert caught.value.detail.startswith("test.yaml:10: rules[0].approval.when: invalid CEL")
    unknown = REVIEWED.replace("reviewer.attributes.team", "approver.attributes.team")
    with pytest.raises(ConfigError) as caught:
        parse_policy(unknown, "test.yaml")
    assert "unknown variable 'approver'" in caught.value.detail
