"""Wire schemas of the control-plane API and the functions that render domain values.

Rendered objects are plain JSON: times in ISO 8601 UTC (``…Z``), durations in seconds
and in their canonical spelling. Nothing rendered here ever includes a secret.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    field_validator,
)

from jitgate.domain.durations import format_duration
from jitgate.domain.lifecycle import terms_hash
from jitgate.domain.masks import MAX_MASK_LENGTH, MAX_MASKS
from jitgate.domain.models import AccessRequest, Api, Grant, GrantStatus, Principal
from jitgate.domain.scopes import MAX_SCOPE_LENGTH
from jitgate.errors import InvalidInput
from jitgate.services.access import RequestView

MAX_ATTRIBUTE_DEPTH = 8


def _depth(value: Any) -> int:
    """How deeply ``value`` nests (a scalar is 1); ``ValueError`` on a string with NUL.

    Iterative, so that hostile nesting cannot exhaust the stack.
    """
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, str):
            if "\x00" in item:
                raise ValueError("NUL characters are not allowed")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:  # lone surrogates cannot be stored or rendered
                raise ValueError("text must be valid Unicode") from exc
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite")
        if isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, dict):
            stack.extend((k, depth + 1) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
    return deepest


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # PostgreSQL text cannot hold NUL (SQLite can): refuse it on every backend alike.
    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        _depth(value)
        return value


# Strict: JSON true is not "1 second"; the bounds are size limits, the domain checks range.
Duration = (
    Annotated[StrictStr, Field(max_length=32)] | Annotated[StrictInt, Field(ge=-(2**31), le=2**31)]
)
DURATION_HELP = "90s, 15m, 1h, 1h30m or seconds"
ScopeText = Annotated[str, Field(max_length=MAX_SCOPE_LENGTH)]
MaskText = Annotated[str, Field(max_length=MAX_MASK_LENGTH)]
MASKS_HELP = 'JSONPaths whose values are masked in JSON responses, e.g. "$.card.number"'


class RequestIn(Body):
    api: str = Field(max_length=64)
    scopes: list[str] = Field(min_length=1, max_length=20)
    duration: Duration = Field(description=DURATION_HELP)
    reason: str = Field(max_length=1000)
    ticket: str | None = Field(default=None, max_length=200)
    starts_at: datetime | None = None


class CommentIn(Body):
    comment: str = Field(default="", max_length=2000)


class ApproveIn(CommentIn):
    terms_hash: str | None = Field(
        default=None,
        max_length=64,
        description="the request's terms_hash as shown to the approver: 409 if it changed since",
    )
    scopes: list[ScopeText] | None = Field(
        default=None, min_length=1, max_length=20, description="narrow the request to these"
    )
    duration: Duration | None = Field(default=None, description="shorten it: " + DURATION_HELP)


class ExtendIn(Body):
    duration: Duration = Field(description="how long after the grant ends: " + DURATION_HELP)
    reason: str = Field(max_length=1000)
    scopes: list[ScopeText] | None = Field(
        default=None, min_length=1, max_length=20, description="the grant's, or narrower"
    )


class RevokeIn(Body):
    reason: str = Field(default="", max_length=1000)


class RevocationsIn(Body):
    principal: str | None = Field(default=None, max_length=64)
    api: str | None = Field(default=None, max_length=64)
    reason: str = Field(max_length=1000)


class InjectionIn(Body):
    kind: Literal["header", "query", "basic"] = "header"
    name: str = Field(default="Authorization", max_length=64)
    template: str = Field(default="Bearer {secret}", max_length=256)
    username: str = Field(default="", max_length=256)


class ApiIn(Body):
    name: str = Field(max_length=64)
    base_url: str = Field(max_length=2048)
    secret: str = Field(max_length=4096, json_schema_extra={"writeOnly": True})
    injection: InjectionIn = InjectionIn()
    environment: str = Field(default="prod", max_length=64)
    owners: list[str] = Field(default_factory=list, max_length=50)
    description: str = Field(default="", max_length=2000)
    masks: list[MaskText] = Field(
        default_factory=list, max_length=MAX_MASKS, description=MASKS_HELP
    )


class MasksIn(Body):
    masks: list[MaskText] = Field(max_length=MAX_MASKS, description=MASKS_HELP)


class SecretIn(Body):
    secret: str = Field(max_length=4096, json_schema_extra={"writeOnly": True})


class PrincipalIn(Body):
    id: str = Field(max_length=64)
    kind: Literal["user", "service"] = "user"
    display_name: str = Field(default="", max_length=200)
    groups: list[str] = Field(default_factory=list, max_length=100)
    attributes: dict[str, Any] = Field(default_factory=dict)
    is_admin: bool = False

    # Deep values are stored fine but cannot be rendered back: every listing would fail.
    @field_validator("attributes")
    @classmethod
    def _shallow(cls, value: dict[str, Any]) -> dict[str, Any]:
        if _depth(value) > MAX_ATTRIBUTE_DEPTH:
            raise ValueError(f"attributes nest deeper than {MAX_ATTRIBUTE_DEPTH} levels")
        return value


class TokenIn(Body):
    label: str = Field(default="", max_length=200)
    expires_at: AwareDatetime | None = None


def in_range(at: datetime | None, name: str) -> datetime | None:
    """A time the database can store (UTC, years 1970-9998), or ``InvalidInput``."""
    if at is None:
        return None
    try:
        utc = at.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not 1970 <= utc.year <= 9998:
        raise InvalidInput(f"{name}: out of range")
    return utc


def iso(at: datetime | None) -> str | None:
    if at is None:
        return None
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _grant_status(g: Grant, now: datetime) -> str:
    """The stored state, refined by time: ``scheduled`` before ``not_before``, ``expired``
    once past ``expires_at`` even before the expiry job has marked it."""
    if g.status is not GrantStatus.ACTIVE:
        return g.status.value
    if now >= g.expires_at:
        return "expired"
    return "scheduled" if now < g.not_before else "active"


def grant_json(g: Grant, now: datetime) -> dict[str, Any]:
    live = g.is_active_at(now)
    return {
        "id": g.id,
        "request_id": g.request_id,
        "principal": g.principal,
        "api": g.api,
        "scopes": list(g.scopes),
        "not_before": iso(g.not_before),
        "expires_at": iso(g.expires_at),
        "status": _grant_status(g, now),
        "active": live,
        # By the server's clock, so that clients need not trust their own.
        "remaining_seconds": (
            max(0, int((g.expires_at - now).total_seconds()))
            if g.status is GrantStatus.ACTIVE
            else 0
        ),
        **g.limits.as_dict(),
        "masks": list(g.masks),
        "created_at": iso(g.created_at),
        "ended_at": iso(g.ended_at),
        "ended_by": g.ended_by,
        "end_reason": g.end_reason,
        "extends": g.extends,
        "needs_review": g.needs_review and g.reviewed_at is None,
        "reviewed_by": g.reviewed_by,
        "reviewed_at": iso(g.reviewed_at),
    }


def request_json(r: AccessRequest) -> dict[str, Any]:
    return {
        "id": r.id,
        "requester": r.requester,
        "api": r.api,
        "scopes": list(r.scopes),
        "duration": format_duration(r.duration),
        "duration_seconds": int(r.duration.total_seconds()),
        "reason": r.reason,
        "ticket": r.ticket,
        "starts_at": iso(r.starts_at),
        "status": r.status.value,
        "created_at": iso(r.created_at),
        "decided_at": iso(r.decided_at),
        "grant_id": r.grant_id,
        "decision": r.decision.as_dict(),
        "approved_scopes": None if r.approved_scopes is None else list(r.approved_scopes),
        "approved_duration": (
            None if r.approved_duration is None else format_duration(r.approved_duration)
        ),
        "approved_duration_seconds": (
            None if r.approved_duration is None else int(r.approved_duration.total_seconds())
        ),
        "extends_grant": r.extends_grant,
        "terms_hash": terms_hash(r),
    }


def request_view_json(v: RequestView, now: datetime) -> dict[str, Any]:
    return {
        **request_json(v.request),
        "approvals": [
            {
                "approver": a.approver,
                "verdict": a.verdict,
                "comment": a.comment,
                "at": iso(a.at),
                "terms_hash": a.terms_hash,
            }
            for a in v.approvals
        ],
        "grant": grant_json(v.grant, now) if v.grant else None,
    }


def api_json(a: Api) -> dict[str, Any]:
    inj = a.injection
    return {
        "name": a.name,
        "base_url": a.base_url,
        "environment": a.environment,
        "owners": sorted(a.owners),
        "description": a.description,
        "masks": list(a.masks),
        "injection": {
            "kind": inj.kind.value,
            "name": inj.name,
            "template": inj.template,
            "username": inj.username,
        },
    }


def principal_json(p: Principal) -> dict[str, Any]:
    return {
        "id": p.id,
        "kind": p.kind.value,
        "display_name": p.display_name,
        "groups": sorted(p.groups),
        "attributes": p.attributes,
        "is_admin": p.is_admin,
        "disabled": p.disabled,
    }
