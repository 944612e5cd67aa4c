"""The validated policy as frozen values.

A :class:`Policy` only exists after :mod:`jitgate.policy.loader` has checked every key of
the file, so the engine never meets a half-valid rule: every rule has a unique name, at
least one requester, at least one API, at least one parsed scope, a positive
``max_duration`` (the file's default when the rule names none) and an approval mode.
``Policy.digest`` is the SHA-256 of the file's bytes; decisions and audit events carry it
as the policy version, so a decision can always be traced to the exact text that made it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from jitgate.domain.models import NO_LIMITS, ApprovalStep, Limits, Principal
from jitgate.domain.scopes import Scope
from jitgate.policy.conditions import Condition
from jitgate.policy.risk import DEFAULT_WEIGHTS, RiskWeights

ANY_API = "*"


@dataclass(frozen=True, slots=True)
class Defaults:
    """Values a rule inherits when it does not set them."""

    max_duration: timedelta
    pending_ttl: timedelta
    time_zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))


@dataclass(frozen=True, slots=True)
class Oidc:
    """A workload identity: tokens from ``issuer`` whose claims include every ``claims`` pair."""

    issuer: str
    claims: tuple[tuple[str, str], ...]

    def admits(self, oidc: dict[str, Any] | None) -> bool:
        if not oidc or oidc.get("iss") != self.issuer:
            return False
        return all(oidc.get(name) == value for name, value in self.claims)


@dataclass(frozen=True, slots=True)
class Requesters:
    """Who may ask under a rule: a listed principal id, a member of a listed group, or a
    workload presenting a matching OIDC identity."""

    groups: frozenset[str] = frozenset()
    principals: frozenset[str] = frozenset()
    oidc: Oidc | None = None

    def admits(self, principal: Principal, oidc: dict[str, Any] | None = None) -> bool:
        if principal.id in self.principals or not self.groups.isdisjoint(principal.groups):
            return True
        return self.oidc is not None and self.oidc.admits(oidc)


class Mode(StrEnum):
    AUTO = "auto"
    APPROVERS = "approvers"
    BREAK_GLASS = "break_glass"


@dataclass(frozen=True, slots=True)
class Step:
    """One approval step as written: the stored requirement plus its compiled condition."""

    spec: ApprovalStep
    when: Condition | None = None


@dataclass(frozen=True, slots=True)
class Approval:
    """How a covered request is decided.

    ``auto``: approved at once. ``break_glass``: approved at once, flagged for review and
    announced loudly. ``approvers``: every step met by different people, before
    ``deny_count`` eligible people deny.
    """

    mode: Mode
    steps: tuple[Step, ...] = ()
    deny_count: int = 1

    @property
    def auto(self) -> bool:
        return self.mode != Mode.APPROVERS


AUTO = Approval(Mode.AUTO)
BREAK_GLASS = Approval(Mode.BREAK_GLASS)


@dataclass(frozen=True, slots=True)
class Extensions:
    """How a grant under the rule may be extended."""

    max_count: int
    after_elapsed: float  # fraction of the grant that must have elapsed, 0..1
    max_total: timedelta | None  # the longest a chain of grants may reach, from its start


NO_EXTENSIONS = Extensions(max_count=0, after_elapsed=0.5, max_total=None)


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of the policy; ``line`` is where it starts in the source file."""

    name: str
    description: str
    requesters: Requesters
    apis: frozenset[str]
    scopes: tuple[Scope, ...]
    max_duration: timedelta
    approval: Approval
    line: int
    when: Condition | None = None
    reason_pattern: re.Pattern[str] | None = None
    pending_ttl: timedelta | None = None
    extensions: Extensions = NO_EXTENSIONS
    notify: dict[str, str] = field(default_factory=dict)
    limits: Limits = NO_LIMITS
    masks: tuple[str, ...] = ()  # response masks put on its grants (domain.masks)

    def admits_api(self, api_name: str) -> bool:
        return ANY_API in self.apis or api_name in self.apis

    def as_dict(self) -> dict[str, Any]:
        """The rule as JSON values, for ``GET /v1/policy`` and ``policy explain``."""
        requesters: dict[str, Any] = {
            "groups": sorted(self.requesters.groups),
            "principals": sorted(self.requesters.principals),
        }
        if self.requesters.oidc is not None:
            oidc = self.requesters.oidc
            requesters["oidc"] = {"issuer": oidc.issuer, "claims": dict(oidc.claims)}
        approval: str | dict[str, Any] = self.approval.mode.value
        if self.approval.mode is Mode.APPROVERS:
            approval = {
                "steps": [step.spec.as_dict() for step in self.approval.steps],
                "deny_count": self.approval.deny_count,
            }
        return {
            "name": self.name,
            "description": self.description,
            "line": self.line,
            "requesters": requesters,
            "apis": sorted(self.apis),
            "scopes": [str(scope) for scope in self.scopes],
            "max_duration_seconds": int(self.max_duration.total_seconds()),
            "approval": approval,
            "when": None if self.when is None else self.when.source,
            "reason_pattern": None if self.reason_pattern is None else self.reason_pattern.pattern,
            "pending_ttl_seconds": (
                None if self.pending_ttl is None else int(self.pending_ttl.total_seconds())
            ),
            "extensions": {
                "max": self.extensions.max_count,
                "min_elapsed": self.extensions.after_elapsed,
                "max_total_seconds": (
                    None
                    if self.extensions.max_total is None
                    else int(self.extensions.max_total.total_seconds())
                ),
            },
            "notify": dict(self.notify),
            "limits": self.limits.as_dict(),
            "masks": list(self.masks),
        }


@dataclass(frozen=True, slots=True)
class Policy:
    """A whole policy file: rules in the order they are read."""

    version: int
    defaults: Defaults
    rules: tuple[Rule, ...]
    source: str
    digest: str
    risk: RiskWeights = DEFAULT_WEIGHTS
