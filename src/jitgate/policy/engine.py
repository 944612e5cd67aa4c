"""Policy engine: one request (a :class:`Subject`) -> a :class:`Decision` with its reasons.

Guarantees:

* Pure and deterministic: the result depends only on the policy and the subject (the
  subject carries the time of the request and the requester's recent denials).
* Rules are read in order; the first rule whose requesters, API and scope ceiling cover
  the *whole* request, and whose ``when`` holds, decides; no later rule is consulted —
  not even when that rule then denies because the request is longer than its
  ``max_duration`` or its reason does not match ``reason_pattern`` (a request is never
  shortened or rewritten to fit).
* Fail closed: no covering rule, no scope, a non-positive duration, a disabled principal
  or a ``when`` that cannot be evaluated is a denial; every denial says why, and the
  :class:`Evaluation` keeps one :class:`RuleTrace` per rule examined, in order, for
  ``policy explain``.
* The risk is computed for every request, whatever the outcome.

Approvals are judged here too, so that the rules for who may approve live in one place:
:func:`eligible_steps` says which steps of a decision a reviewer may count towards (or
why none), and :func:`steps_met` assigns approvers to steps so that each person counts
once and every step is met by different people.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import cel

from jitgate.domain.durations import format_duration
from jitgate.domain.models import Api, ApprovalStep, Decision, Outcome, Principal, Risk
from jitgate.domain.scopes import Scope, covers
from jitgate.policy.conditions import (
    REVIEWER_VARIABLES,
    Condition,
    ConditionError,
    activation,
    compile_condition,
)
from jitgate.policy.model import Mode, Policy, Rule
from jitgate.policy.risk import assess

NO_COVERING_RULE = "no rule covers this request"
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class Subject:
    """What is asked: who, on which API, which scopes, for how long, when and why."""

    principal: Principal
    api: Api
    scopes: tuple[Scope, ...]
    duration: timedelta
    now: datetime
    reason: str = ""
    ticket: str | None = None
    starts_at: datetime | None = None
    recent_denials: int = 0
    oidc: dict[str, Any] | None = None
    extension: bool = False


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """Why one rule did (``matched``) or did not decide the request."""

    rule: str
    line: int
    matched: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The decision, the rule that made it (if any) and one trace entry per rule examined."""

    decision: Decision
    trace: tuple[RuleTrace, ...]
    rule: Rule | None = None


@dataclass(slots=True)
class _Variables:
    """The CEL context of one subject, built on first use and shared by every condition.

    Building the context converts every variable to CEL values, which costs far more than
    evaluating a condition (see bench/policy.py): it is done at most once per decision.
    """

    subject: Subject
    risk: Risk
    zone: ZoneInfo
    reviewer: Principal | None = None
    _context: cel.Context | None = field(default=None)

    def context(self) -> cel.Context:
        if self._context is None:
            values = variables(self.subject, self.risk, self.zone)
            if self.reviewer is not None:
                values["reviewer"] = _principal(self.reviewer)
            self._context = activation(**values)
        return self._context


def evaluate(policy: Policy, subject: Subject) -> Evaluation:
    """Decide ``subject`` under ``policy``; see the module docstring for the guarantees."""
    zone = policy.defaults.time_zone
    risk = assess(
        subject.principal,
        subject.api,
        subject.scopes,
        subject.duration,
        local_time=subject.now.astimezone(zone),
        recent_denials=subject.recent_denials,
        weights=policy.risk,
    )
    refusal = _refusal(subject)
    if refusal is not None:
        return Evaluation(_deny(policy, None, (refusal,), risk), ())
    trace: list[RuleTrace] = []
    shared = _Variables(subject, risk, zone)
    for rule in policy.rules:
        mismatch = _mismatch(rule, subject)
        if mismatch is None and rule.when is not None:
            try:
                if not rule.when.holds(shared.context()):
                    mismatch = f"when is false: {rule.when.source}"
            except ConditionError as exc:
                reason = f"rule {rule.name}: its when condition failed ({exc}); denied"
                trace.append(RuleTrace(rule.name, rule.line, True, reason))
                return Evaluation(_deny(policy, rule.name, (reason,), risk), tuple(trace), rule)
        if mismatch is not None:
            trace.append(RuleTrace(rule.name, rule.line, False, mismatch))
            continue
        trace.append(RuleTrace(rule.name, rule.line, True, "covers the request"))
        return Evaluation(_decide(policy, rule, subject, risk), tuple(trace), rule)
    reasons = (NO_COVERING_RULE, *(f"rule {t.rule} (line {t.line}): {t.reason}" for t in trace))
    return Evaluation(_deny(policy, None, reasons, risk), tuple(trace))


def variables(subject: Subject, risk: Risk, zone: ZoneInfo) -> dict[str, Any]:
    """The CEL variables for ``subject`` (documented in docs/policy.md)."""
    local = subject.now.astimezone(zone)
    principal, api = subject.principal, subject.api
    return {
        "request": {
            "api": api.name,
            "scopes": [str(scope) for scope in subject.scopes],
            "methods": sorted({method for scope in subject.scopes for method in scope.methods}),
            "paths": ["/" + "/".join(scope.segments) for scope in subject.scopes],
            "duration": subject.duration,
            "reason": subject.reason,
            "ticket": subject.ticket,
            "starts_at": None if subject.starts_at is None else subject.starts_at.astimezone(UTC),
            "extension": subject.extension,
        },
        "principal": _principal(principal),
        "api": {"name": api.name, "environment": api.environment, "owners": sorted(api.owners)},
        "risk": {"score": risk.score, "factors": dict(risk.factors)},
        "time": {
            # Instants in UTC: CEL's getHours() & co. read UTC, and the library cannot
            # convert a ZoneInfo-aware datetime at all (local time is time.hour & co.).
            "now": subject.now.astimezone(UTC),
            "hour": local.hour,
            "minute": local.minute,
            "weekday": _WEEKDAYS[local.weekday()],
            "date": local.date().isoformat(),
        },
        "oidc": dict(subject.oidc or {}),
    }


def eligible_steps(
    decision: Decision,
    reviewer: Principal,
    subject: Subject,
    zone: ZoneInfo,
) -> tuple[frozenset[int], str | None]:
    """The steps of ``decision`` that ``reviewer`` may count towards, or why none.

    ``subject`` is the request as it stands (its requester as stored now). The requester
    never counts, whatever their groups; a disabled principal never counts; a reviewer
    condition that cannot be evaluated does not count (fail closed).
    """
    if decision.outcome is not Outcome.NEEDS_APPROVAL:
        return frozenset(), f"the request does not await approval ({decision.outcome.value})"
    if reviewer.id == subject.principal.id:
        return frozenset(), "requesters cannot approve their own request"
    if reviewer.disabled:
        return frozenset(), f"approver {reviewer.id} is disabled"
    steps: set[int] = set()
    why: list[str] = []
    shared = _Variables(subject, decision.risk, zone, reviewer)
    for index, step in enumerate(decision.steps):
        if reviewer.id not in step.principals and reviewer.groups.isdisjoint(step.groups):
            why.append(f"{_step_name(step)}: not {_step_who(step)}")
            continue
        if step.when is not None:
            try:
                holds = _reviewer_condition(step.when).holds(shared.context())
            except (ConditionError, ValueError) as exc:  # ValueError: it no longer compiles
                why.append(f"{_step_name(step)}: reviewer condition failed ({exc})")
                continue
            if not holds:
                why.append(f"{_step_name(step)}: reviewer condition is false: {step.when}")
                continue
        steps.add(index)
    if steps:
        return frozenset(steps), None
    return frozenset(), f"approver {reviewer.id} is not eligible: " + "; ".join(why)


def steps_met(decision: Decision, eligible: Mapping[str, frozenset[int]]) -> tuple[int, ...]:
    """How many approvers each step has, assigning each approver to at most one step.

    ``eligible`` maps each approver to the steps they may count towards. The assignment
    is a maximum bipartite matching (approvers to step seats), so the result is the best
    any assignment could do: the request is approved when every step is full.
    """
    seats = [index for index, step in enumerate(decision.steps) for _ in range(step.count)]
    holder: dict[int, str] = {}

    def place(approver: str, seen: set[int]) -> bool:
        for seat, step in enumerate(seats):
            if step in eligible[approver] and seat not in seen:
                seen.add(seat)
                if seat not in holder or place(holder[seat], seen):
                    holder[seat] = approver
                    return True
        return False

    for approver in sorted(eligible):
        place(approver, set())
    filled = [0] * len(decision.steps)
    for seat in holder:
        filled[seats[seat]] += 1
    return tuple(filled)


@lru_cache(maxsize=256)
def _reviewer_condition(source: str) -> Condition:
    return compile_condition(source, REVIEWER_VARIABLES)


def _principal(principal: Principal) -> dict[str, Any]:
    return {
        "id": principal.id,
        "kind": principal.kind.value,
        "groups": sorted(principal.groups),
        "attributes": dict(principal.attributes),
    }


def _refusal(subject: Subject) -> str | None:
    if subject.principal.disabled:
        return f"principal {subject.principal.id} is disabled"
    if not subject.scopes:
        return "the request names no scope"
    if subject.duration <= timedelta(0):
        return "the requested duration must be positive"
    return None


def _mismatch(rule: Rule, subject: Subject) -> str | None:
    principal = subject.principal
    if not rule.requesters.admits(principal, subject.oidc):
        return f"requester {principal.id} {_requester_miss(rule)}"
    if not rule.admits_api(subject.api.name):
        return f"api {subject.api.name} not in {_names(rule.apis)}"
    for scope in subject.scopes:
        if not any(covers(ceiling, scope) for ceiling in rule.scopes):
            ceiling = "[" + ", ".join(repr(str(c)) for c in rule.scopes) + "]"
            return f"scope {str(scope)!r} is not inside the ceiling {ceiling}"
    return None


def _requester_miss(rule: Rule) -> str:
    requesters = rule.requesters
    parts = []
    if requesters.principals:
        parts.append(f"among principals {_names(requesters.principals)}")
    if requesters.groups:
        parts.append(f"in groups {_names(requesters.groups)}")
    if requesters.oidc is not None:
        parts.append(f"a workload of {requesters.oidc.issuer} with the required claims")
    return "is not " + " nor ".join(parts)


def _decide(policy: Policy, rule: Rule, subject: Subject, risk: Risk) -> Decision:
    if subject.duration > rule.max_duration:
        reason = (
            f"rule {rule.name} allows at most {format_duration(rule.max_duration)}; "
            f"{format_duration(subject.duration)} was requested"
        )
        return _deny(policy, rule.name, (reason,), risk)
    if rule.reason_pattern is not None and not rule.reason_pattern.search(subject.reason):
        reason = (
            f"rule {rule.name} needs a reason matching {rule.reason_pattern.pattern!r} "
            "(e.g. a ticket id)"
        )
        return _deny(policy, rule.name, (reason,), risk)
    common: dict[str, Any] = {
        "rule": rule.name,
        "risk": risk,
        "policy_version": policy.digest,
        "notify": rule.notify,
        "limits": rule.limits,
        "masks": rule.masks,
    }
    if rule.approval.mode is Mode.AUTO:
        reasons = (f"rule {rule.name} approves automatically",)
        return Decision(outcome=Outcome.APPROVE, reasons=reasons, **common)
    if rule.approval.mode is Mode.BREAK_GLASS:
        reasons = (f"rule {rule.name} is break glass: granted at once, to be reviewed",)
        return Decision(outcome=Outcome.APPROVE, reasons=reasons, break_glass=True, **common)
    steps = tuple(step.spec for step in rule.approval.steps)
    needs = "; then ".join(f"{s.count} from {_step_who(s)}" for s in steps)
    return Decision(
        outcome=Outcome.NEEDS_APPROVAL,
        reasons=(f"rule {rule.name} needs approval: {needs}",),
        steps=steps,
        deny_count=rule.approval.deny_count,
        pending_ttl=rule.pending_ttl or policy.defaults.pending_ttl,
        **common,
    )


def _step_name(step: ApprovalStep) -> str:
    return f"step {step.name}"


def _step_who(step: ApprovalStep) -> str:
    parts = []
    if step.groups:
        parts.append(f"groups {_names(step.groups)}")
    if step.principals:
        parts.append(f"principals {_names(step.principals)}")
    return " or ".join(parts)


def _deny(policy: Policy, rule: str | None, reasons: tuple[str, ...], risk: Risk) -> Decision:
    return Decision(
        outcome=Outcome.DENY, rule=rule, reasons=reasons, risk=risk, policy_version=policy.digest
    )


def _names(names: Iterable[str]) -> str:
    return "[" + ", ".join(sorted(names)) + "]"
