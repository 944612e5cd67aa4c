"""Policy engine: one request (a :class:`Subject`) -> a :class:`Decision` with its reasons.

Guarantees:

* Pure and deterministic: the result depends only on the policy and the subject.
* Rules are read in order; the first rule whose requesters, API and scope ceiling cover
  the *whole* request decides, and no later rule is consulted — not even when that rule
  then denies because the request is longer than its ``max_duration`` (a request is
  never shortened to fit).
* Fail closed: no covering rule, no scope, a non-positive duration or a disabled
  principal is a denial; every denial says why, and the :class:`Evaluation` keeps one
  :class:`RuleTrace` per rule examined for ``policy explain``.
* The risk is computed for every request, whatever the outcome.

Later features slot in as further checks in :func:`_mismatch` (``when:`` conditions) or
as further :class:`~jitgate.policy.model.Approval` modes (break glass).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from jitgate.domain.durations import format_duration
from jitgate.domain.models import Api, Decision, Outcome, Principal, Risk
from jitgate.domain.scopes import Scope, covers
from jitgate.policy.model import Policy, Rule
from jitgate.policy.risk import assess

NO_COVERING_RULE = "no rule covers this request"


@dataclass(frozen=True, slots=True)
class Subject:
    """What is asked: who, on which API, which scopes, for how long."""

    principal: Principal
    api: Api
    scopes: tuple[Scope, ...]
    duration: timedelta


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """Why one rule did (``matched``) or did not cover the request."""

    rule: str
    line: int
    matched: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The decision, and one trace entry per rule examined (in order) to reach it."""

    decision: Decision
    trace: tuple[RuleTrace, ...]


def evaluate(policy: Policy, subject: Subject) -> Evaluation:
    """Decide ``subject`` under ``policy``; see the module docstring for the guarantees."""
    risk = assess(subject.principal, subject.api, subject.scopes, subject.duration)
    refusal = _refusal(subject)
    if refusal is not None:
        return Evaluation(_deny(policy, None, (refusal,), risk), ())
    trace: list[RuleTrace] = []
    for rule in policy.rules:
        mismatch = _mismatch(rule, subject)
        if mismatch is not None:
            trace.append(RuleTrace(rule.name, rule.line, False, mismatch))
            continue
        trace.append(RuleTrace(rule.name, rule.line, True, "covers the request"))
        return Evaluation(_decide(policy, rule, subject, risk), tuple(trace))
    reasons = (NO_COVERING_RULE, *(f"rule {t.rule} (line {t.line}): {t.reason}" for t in trace))
    return Evaluation(_deny(policy, None, reasons, risk), tuple(trace))


def approver_eligible(decision: Decision, approver: Principal, requester_id: str) -> str | None:
    """None when ``approver`` may approve the request ``decision`` was made for, else why not.

    The requester never counts, whatever their groups. Counting each approver once is the
    service's job: it knows who has approved already.
    """
    if decision.outcome is not Outcome.NEEDS_APPROVAL:
        return f"the request does not await approval (policy outcome: {decision.outcome.value})"
    if approver.id == requester_id:
        return "requesters cannot approve their own request"
    if approver.disabled:
        return f"approver {approver.id} is disabled"
    if approver.groups.isdisjoint(decision.approver_groups):
        return f"approver {approver.id} is not in groups {_names(decision.approver_groups)}"
    return None


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
    if not rule.requesters.admits(principal):
        return f"requester {principal.id} {_requester_miss(rule)}"
    if not rule.admits_api(subject.api.name):
        return f"api {subject.api.name} not in {_names(rule.apis)}"
    for scope in subject.scopes:
        if not any(covers(ceiling, scope) for ceiling in rule.scopes):
            ceiling = "[" + ", ".join(repr(str(c)) for c in rule.scopes) + "]"
            return f"scope {str(scope)!r} is not inside the ceiling {ceiling}"
    return None


def _requester_miss(rule: Rule) -> str:
    groups, principals = rule.requesters.groups, rule.requesters.principals
    if groups and principals:
        return f"is not among principals {_names(principals)} nor in groups {_names(groups)}"
    if principals:
        return f"is not among principals {_names(principals)}"
    return f"is not in groups {_names(groups)}"


def _decide(policy: Policy, rule: Rule, subject: Subject, risk: Risk) -> Decision:
    if subject.duration > rule.max_duration:
        reason = (
            f"rule {rule.name} allows at most {format_duration(rule.max_duration)}; "
            f"{format_duration(subject.duration)} was requested"
        )
        return _deny(policy, rule.name, (reason,), risk)
    if rule.approval.auto:
        return Decision(
            outcome=Outcome.APPROVE,
            rule=rule.name,
            reasons=(f"rule {rule.name} approves automatically",),
            risk=risk,
            policy_version=policy.digest,
        )
    count, groups = rule.approval.count, rule.approval.from_groups
    plural = "approval" if count == 1 else "approvals"
    return Decision(
        outcome=Outcome.NEEDS_APPROVAL,
        rule=rule.name,
        reasons=(f"rule {rule.name} needs {count} {plural} from groups {_names(groups)}",),
        risk=risk,
        approvals_required=count,
        approver_groups=groups,
        policy_version=policy.digest,
    )


def _deny(policy: Policy, rule: str | None, reasons: tuple[str, ...], risk: Risk) -> Decision:
    return Decision(
        outcome=Outcome.DENY, rule=rule, reasons=reasons, risk=risk, policy_version=policy.digest
    )


def _names(names: Iterable[str]) -> str:
    return "[" + ", ".join(sorted(names)) + "]"
