"""The nouns of jitgate as frozen values.

These carry no behaviour beyond small derived properties; state changes live in
:mod:`jitgate.domain.lifecycle`, persistence in :mod:`jitgate.storage`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any


class PrincipalKind(StrEnum):
    USER = "user"
    SERVICE = "service"


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    kind: PrincipalKind
    display_name: str
    groups: frozenset[str] = frozenset()
    attributes: dict[str, Any] = field(default_factory=dict)
    is_admin: bool = False
    disabled: bool = False


class InjectionKind(StrEnum):
    HEADER = "header"
    QUERY = "query"
    BASIC = "basic"


@dataclass(frozen=True, slots=True)
class Injection:
    """How the upstream secret is put on the upstream request.

    ``header``: header ``name`` set to ``template`` with ``{secret}`` substituted.
    ``query``: query parameter ``name`` set to the secret.
    ``basic``: ``Authorization: Basic`` with ``username`` and the secret as password.
    """

    kind: InjectionKind
    name: str = "Authorization"
    template: str = "Bearer {secret}"
    username: str = ""


@dataclass(frozen=True, slots=True)
class Api:
    name: str
    base_url: str
    injection: Injection
    environment: str
    owners: frozenset[str] = frozenset()
    description: str = ""
    masks: tuple[str, ...] = ()  # JSONPaths masked in its JSON responses (domain.masks)


class RequestStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class GrantStatus(StrEnum):
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"
    RELEASED = "released"


class Outcome(StrEnum):
    APPROVE = "approve"
    DENY = "deny"
    NEEDS_APPROVAL = "needs_approval"


@dataclass(frozen=True, slots=True)
class Limits:
    """Usage limits a grant carries from the rule that granted it (``None``: no limit).

    ``max_calls``: calls the gateway admits in the grant's whole life; ``rate_calls`` per
    ``rate_window``: calls admitted in any such window; ``idle_timeout``: a grant unused
    for this long is revoked by itself.
    """

    max_calls: int | None = None
    rate_calls: int | None = None
    rate_window: timedelta | None = None
    idle_timeout: timedelta | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_calls": self.max_calls,
            "rate_limit": (
                None
                if self.rate_calls is None or self.rate_window is None
                else {
                    "calls": self.rate_calls,
                    "per_seconds": int(self.rate_window.total_seconds()),
                }
            ),
            "idle_timeout_seconds": (
                None if self.idle_timeout is None else int(self.idle_timeout.total_seconds())
            ),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Limits:
        rate = d.get("rate_limit")
        idle = d.get("idle_timeout_seconds")
        return cls(
            max_calls=d.get("max_calls"),
            rate_calls=None if rate is None else int(rate["calls"]),
            rate_window=None if rate is None else timedelta(seconds=int(rate["per_seconds"])),
            idle_timeout=None if idle is None else timedelta(seconds=int(idle)),
        )


NO_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Risk:
    score: int
    factors: tuple[tuple[str, int], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"score": self.score, "factors": [{"name": n, "points": p} for n, p in self.factors]}


@dataclass(frozen=True, slots=True)
class ApprovalStep:
    """One step of a human approval: ``count`` distinct principals, each eligible for it.

    Eligible means: in one of ``groups`` or listed in ``principals``, and, when ``when``
    (a CEL reviewer condition) is set, that condition holds for them.
    """

    name: str
    count: int
    groups: frozenset[str] = frozenset()
    principals: frozenset[str] = frozenset()
    when: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "count": self.count,
            "groups": sorted(self.groups),
            "principals": sorted(self.principals),
            "when": self.when,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy says about one request, with every reason.

    A request that needs approval carries its whole approval requirement here (steps,
    deny threshold, pending time-to-live), so a later policy reload never changes what an
    already filed request needs.
    """

    outcome: Outcome
    rule: str | None
    reasons: tuple[str, ...]
    risk: Risk
    policy_version: str = ""
    steps: tuple[ApprovalStep, ...] = ()
    deny_count: int = 1
    pending_ttl: timedelta | None = None
    break_glass: bool = False
    notify: dict[str, str] = field(default_factory=dict)
    limits: Limits = NO_LIMITS
    masks: tuple[str, ...] = ()  # the rule's response masks, carried onto the grant

    @property
    def approvals_required(self) -> int:
        return sum(step.count for step in self.steps)

    @property
    def approver_groups(self) -> frozenset[str]:
        return frozenset().union(*(step.groups for step in self.steps))

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "rule": self.rule,
            "reasons": list(self.reasons),
            "risk": self.risk.as_dict(),
            "approvals_required": self.approvals_required,
            "approver_groups": sorted(self.approver_groups),
            "steps": [step.as_dict() for step in self.steps],
            "deny_count": self.deny_count,
            "pending_ttl_seconds": (
                None if self.pending_ttl is None else int(self.pending_ttl.total_seconds())
            ),
            "break_glass": self.break_glass,
            "notify": dict(self.notify),
            "limits": self.limits.as_dict(),
            "masks": list(self.masks),
            "policy_version": self.policy_version,
        }


@dataclass(frozen=True, slots=True)
class AccessRequest:
    id: str
    requester: str
    api: str
    scopes: tuple[str, ...]
    duration: timedelta
    reason: str
    status: RequestStatus
    created_at: datetime
    decision: Decision
    ticket: str | None = None
    starts_at: datetime | None = None
    decided_at: datetime | None = None
    grant_id: str | None = None
    approved_scopes: tuple[str, ...] | None = None
    approved_duration: timedelta | None = None
    extends_grant: str | None = None

    @property
    def terms(self) -> tuple[tuple[str, ...], timedelta]:
        """What approving now would grant: the request, as narrowed by approvers so far."""
        return (self.approved_scopes or self.scopes, self.approved_duration or self.duration)


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    request_id: str
    principal: str
    api: str
    scopes: tuple[str, ...]
    not_before: datetime
    expires_at: datetime
    status: GrantStatus
    created_at: datetime
    limits: Limits = NO_LIMITS
    masks: tuple[str, ...] = ()  # response masks from the rule, on top of the API's
    ended_at: datetime | None = None
    ended_by: str | None = None
    end_reason: str | None = None
    extends: str | None = None
    needs_review: bool = False
    reviewed_by: str | None = None
    reviewed_at: datetime | None = None

    def is_active_at(self, now: datetime) -> bool:
        return self.status is GrantStatus.ACTIVE and self.not_before <= now < self.expires_at
