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
class Risk:
    score: int
    factors: tuple[tuple[str, int], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"score": self.score, "factors": [{"name": n, "points": p} for n, p in self.factors]}


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy says about one request, with every reason."""

    outcome: Outcome
    rule: str | None
    reasons: tuple[str, ...]
    risk: Risk
    approvals_required: int = 0
    approver_groups: frozenset[str] = frozenset()
    policy_version: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "rule": self.rule,
            "reasons": list(self.reasons),
            "risk": self.risk.as_dict(),
            "approvals_required": self.approvals_required,
            "approver_groups": sorted(self.approver_groups),
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
    max_calls: int | None = None
    ended_at: datetime | None = None
    ended_by: str | None = None
    end_reason: str | None = None

    def is_active_at(self, now: datetime) -> bool:
        return self.status is GrantStatus.ACTIVE and self.not_before <= now < self.expires_at
