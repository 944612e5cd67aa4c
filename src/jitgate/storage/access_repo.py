"""Access requests, approvals and grants."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    RowMapping,
    Select,
    and_,
    func,
    insert,
    not_,
    select,
    update,
)

from jitgate.domain.models import (
    AccessRequest,
    ApprovalStep,
    Decision,
    Grant,
    GrantStatus,
    Limits,
    Outcome,
    RequestStatus,
    Risk,
)
from jitgate.storage.notify import notify_grant_ended
from jitgate.storage.tables import access_requests, approvals, grants


@dataclass(frozen=True, slots=True)
class Approval:
    request_id: str
    approver: str
    verdict: str  # "approve" | "deny"
    comment: str
    at: datetime
    terms_hash: str | None = None  # the request terms the approver was shown

    def as_dict(self) -> dict[str, Any]:
        return {
            "approver": self.approver,
            "verdict": self.verdict,
            "comment": self.comment,
            "at": self.at.isoformat(),
            "terms_hash": self.terms_hash,
        }


@dataclass(frozen=True, slots=True)
class Denial:
    """A denied request, as much as counting recent denials needs."""

    request_id: str
    requester: str
    created_at: datetime
    decided_at: datetime | None


def decision_from_json(d: dict[str, Any]) -> Decision:
    risk = d.get("risk", {})
    ttl = d.get("pending_ttl_seconds")
    return Decision(
        outcome=Outcome(d["outcome"]),
        rule=d.get("rule"),
        reasons=tuple(d.get("reasons", ())),
        risk=Risk(
            score=int(risk.get("score", 0)),
            factors=tuple((f["name"], int(f["points"])) for f in risk.get("factors", ())),
        ),
        policy_version=d.get("policy_version", ""),
        steps=tuple(
            ApprovalStep(
                name=s["name"],
                count=int(s["count"]),
                groups=frozenset(s.get("groups", ())),
                principals=frozenset(s.get("principals", ())),
                when=s.get("when"),
            )
            for s in d.get("steps", ())
        ),
        deny_count=int(d.get("deny_count", 1)),
        pending_ttl=None if ttl is None else timedelta(seconds=int(ttl)),
        break_glass=bool(d.get("break_glass", False)),
        notify=dict(d.get("notify", {})),
        limits=Limits.from_dict(d.get("limits", {})),
        masks=tuple(d.get("masks", ())),
    )


def _seconds(value: int | None) -> timedelta | None:
    return None if value is None else timedelta(seconds=value)


def _whole_seconds(value: timedelta | None) -> int | None:
    return None if value is None else int(value.total_seconds())


def _request(row: RowMapping) -> AccessRequest:
    return AccessRequest(
        id=row["id"],
        requester=row["requester"],
        api=row["api"],
        scopes=tuple(row["scopes"]),
        duration=timedelta(seconds=row["duration_seconds"]),
        reason=row["reason"],
        status=RequestStatus(row["status"]),
        created_at=row["created_at"],
        decision=decision_from_json(row["decision"]),
        ticket=row["ticket"],
        starts_at=row["starts_at"],
        decided_at=row["decided_at"],
        grant_id=row["grant_id"],
        approved_scopes=None if row["approved_scopes"] is None else tuple(row["approved_scopes"]),
        approved_duration=_seconds(row["approved_duration_seconds"]),
        extends_grant=row["extends_grant"],
    )


def _grant(row: RowMapping) -> Grant:
    return Grant(
        id=row["id"],
        request_id=row["request_id"],
        principal=row["principal"],
        api=row["api"],
        scopes=tuple(row["scopes"]),
        not_before=row["not_before"],
        expires_at=row["expires_at"],
        status=GrantStatus(row["status"]),
        created_at=row["created_at"],
        limits=Limits(
            max_calls=row["max_calls"],
            rate_calls=row["rate_calls"],
            rate_window=_seconds(row["rate_window_seconds"]),
            idle_timeout=_seconds(row["idle_timeout_seconds"]),
        ),
        masks=tuple(row["masks"] or ()),
        ended_at=row["ended_at"],
        ended_by=row["ended_by"],
        end_reason=row["end_reason"],
        extends=row["extends"],
        needs_review=row["needs_review"],
        reviewed_by=row["reviewed_by"],
        reviewed_at=row["reviewed_at"],
    )


class AccessRepo:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def _one(self, query: Select[Any], lock: bool) -> RowMapping | None:
        if lock:
            query = query.with_for_update()
        row = self._c.execute(query).first()
        return row._mapping if row else None

    # requests ---------------------------------------------------------------
    def insert_request(
        self, r: AccessRequest, *, idempotency: tuple[str, str] | None = None
    ) -> None:
        """Insert ``r``; ``idempotency`` is (key, hash of the body) for Idempotency-Key."""
        key, body_hash = idempotency if idempotency is not None else (None, None)
        self._c.execute(
            insert(access_requests).values(
                id=r.id,
                requester=r.requester,
                api=r.api,
                scopes=list(r.scopes),
                duration_seconds=int(r.duration.total_seconds()),
                reason=r.reason,
                ticket=r.ticket,
                starts_at=r.starts_at,
                status=r.status.value,
                decision=r.decision.as_dict(),
                created_at=r.created_at,
                decided_at=r.decided_at,
                grant_id=r.grant_id,
                extends_grant=r.extends_grant,
                idempotency_key=key,
                idempotency_hash=body_hash,
            )
        )

    def find_idempotent(self, requester: str, key: str) -> tuple[AccessRequest, str] | None:
        """The request ``requester`` filed under Idempotency-Key ``key``, with its body hash."""
        row = self._one(
            select(access_requests).where(
                access_requests.c.requester == requester,
                access_requests.c.idempotency_key == key,
            ),
            lock=False,
        )
        return (_request(row), row["idempotency_hash"]) if row else None

    def count_denied_since(self, requester: str, since: datetime) -> int:
        query = (
            select(func.count())
            .select_from(access_requests)
            .where(
                access_requests.c.requester == requester,
                access_requests.c.status == RequestStatus.DENIED.value,
                access_requests.c.created_at >= since,
            )
        )
        return int(self._c.execute(query).scalar_one())

    def save_request_terms(self, r: AccessRequest) -> None:
        """Record the approvers' narrowing of ``r`` (scopes and duration)."""
        self._c.execute(
            update(access_requests)
            .where(access_requests.c.id == r.id)
            .values(
                approved_scopes=None if r.approved_scopes is None else list(r.approved_scopes),
                approved_duration_seconds=_whole_seconds(r.approved_duration),
            )
        )

    def save_request_state(self, r: AccessRequest) -> None:
        self._c.execute(
            update(access_requests)
            .where(access_requests.c.id == r.id)
            .values(status=r.status.value, decided_at=r.decided_at, grant_id=r.grant_id)
        )

    def get_request(self, request_id: str, *, lock: bool = False) -> AccessRequest | None:
        row = self._one(select(access_requests).where(access_requests.c.id == request_id), lock)
        return _request(row) if row else None

    def list_requests(
        self,
        *,
        status: RequestStatus | None = None,
        requester: str | None = None,
        api: str | None = None,
        limit: int | None = 100,
    ) -> list[AccessRequest]:
        query = select(access_requests)
        if status is not None:
            query = query.where(access_requests.c.status == status.value)
        if requester is not None:
            query = query.where(access_requests.c.requester == requester)
        if api is not None:
            query = query.where(access_requests.c.api == api)
        query = query.order_by(access_requests.c.created_at.desc())
        if limit is not None:
            query = query.limit(limit)
        return [_request(r._mapping) for r in self._c.execute(query)]

    def requests_since(self, since: datetime, *, limit: int) -> list[AccessRequest]:
        """Requests filed at or after ``since``, newest first, at most ``limit``."""
        query = (
            select(access_requests)
            .where(access_requests.c.created_at >= since)
            .order_by(access_requests.c.created_at.desc(), access_requests.c.id.desc())
            .limit(limit)
        )
        return [_request(r._mapping) for r in self._c.execute(query)]

    def denials_between(self, since: datetime, until: datetime) -> list[Denial]:
        """Requests denied (now) that were filed from ``since`` to ``until``, oldest first."""
        c = access_requests.c
        query = (
            select(c.id, c.requester, c.created_at, c.decided_at)
            .where(
                c.status == RequestStatus.DENIED.value,
                c.created_at >= since,
                c.created_at <= until,
            )
            .order_by(c.created_at, c.id)
        )
        return [Denial(*row) for row in self._c.execute(query)]

    # approvals --------------------------------------------------------------
    def insert_approval(self, a: Approval) -> None:
        self._c.execute(
            insert(approvals).values(
                request_id=a.request_id,
                approver=a.approver,
                verdict=a.verdict,
                comment=a.comment,
                at=a.at,
                terms_hash=a.terms_hash,
            )
        )

    def replace_approval(self, a: Approval) -> None:
        """Replace ``a.approver``'s earlier vote on ``a.request_id`` (re-approving new terms)."""
        self._c.execute(
            update(approvals)
            .where(approvals.c.request_id == a.request_id, approvals.c.approver == a.approver)
            .values(verdict=a.verdict, comment=a.comment, at=a.at, terms_hash=a.terms_hash)
        )

    def list_approvals(self, request_id: str) -> list[Approval]:
        rows = self._c.execute(
            select(approvals).where(approvals.c.request_id == request_id).order_by(approvals.c.id)
        )
        return [
            Approval(
                request_id=r.request_id,
                approver=r.approver,
                verdict=r.verdict,
                comment=r.comment,
                at=r.at,
                terms_hash=r.terms_hash,
            )
            for r in rows
        ]

    # grants -----------------------------------------------------------------
    def insert_grant(self, g: Grant) -> None:
        self._c.execute(
            insert(grants).values(
                id=g.id,
                request_id=g.request_id,
                principal=g.principal,
                api=g.api,
                scopes=list(g.scopes),
                not_before=g.not_before,
                expires_at=g.expires_at,
                status=g.status.value,
                max_calls=g.limits.max_calls,
                rate_calls=g.limits.rate_calls,
                rate_window_seconds=_whole_seconds(g.limits.rate_window),
                idle_timeout_seconds=_whole_seconds(g.limits.idle_timeout),
                masks=list(g.masks) or None,
                created_at=g.created_at,
                extends=g.extends,
                needs_review=g.needs_review,
            )
        )

    def save_grant_state(self, g: Grant) -> None:
        self._c.execute(
            update(grants)
            .where(grants.c.id == g.id)
            .values(
                status=g.status.value,
                ended_at=g.ended_at,
                ended_by=g.ended_by,
                end_reason=g.end_reason,
                reviewed_by=g.reviewed_by,
                reviewed_at=g.reviewed_at,
            )
        )
        if g.status in (GrantStatus.REVOKED, GrantStatus.RELEASED):
            # Other processes' gateways learn of it when (and only if) this commits.
            notify_grant_ended(self._c, g.id, g.expires_at)

    def get_grant(self, grant_id: str, *, lock: bool = False) -> Grant | None:
        row = self._one(select(grants).where(grants.c.id == grant_id), lock)
        return _grant(row) if row else None

    def list_grants(
        self,
        *,
        status: GrantStatus | None = None,
        principal: str | None = None,
        api: str | None = None,
        needs_review: bool | None = None,
        lock: bool = False,
        limit: int | None = 100,
    ) -> list[Grant]:
        """Grants matching every filter given; ``needs_review``: flagged and not yet
        reviewed (true), or not awaiting a review (false)."""
        query = select(grants)
        if status is not None:
            query = query.where(grants.c.status == status.value)
        if principal is not None:
            query = query.where(grants.c.principal == principal)
        if api is not None:
            query = query.where(grants.c.api == api)
        if needs_review is not None:
            awaiting = and_(grants.c.needs_review.is_(True), grants.c.reviewed_at.is_(None))
            query = query.where(awaiting if needs_review else not_(awaiting))
        # With a lock, a fixed order (by id) keeps concurrent lockers from deadlocking.
        query = query.order_by(grants.c.id) if lock else query.order_by(grants.c.created_at.desc())
        if limit is not None:
            query = query.limit(limit)
        if lock:
            query = query.with_for_update()
        return [_grant(r._mapping) for r in self._c.execute(query)]

    def list_extending(self, grant_id: str, *, lock: bool = False) -> list[Grant]:
        """Active grants that continue ``grant_id`` (``Grant.extends``), in id order (the
        order concurrent lockers take them in)."""
        query = (
            select(grants)
            .where(grants.c.extends == grant_id, grants.c.status == GrantStatus.ACTIVE.value)
            .order_by(grants.c.id)
        )
        if lock:
            query = query.with_for_update()
        return [_grant(r._mapping) for r in self._c.execute(query)]

    def due_for_expiry(self, now: datetime, *, limit: int = 500) -> list[Grant]:
        query = (
            select(grants)
            .where(grants.c.status == GrantStatus.ACTIVE.value, grants.c.expires_at <= now)
            .order_by(grants.c.id)
            .limit(limit)
            .with_for_update()
        )
        return [_grant(r._mapping) for r in self._c.execute(query)]

    def idle_watched(self, now: datetime) -> list[Grant]:
        """Active, unexpired grants that have an ``idle_timeout``."""
        query = select(grants).where(
            grants.c.status == GrantStatus.ACTIVE.value,
            grants.c.expires_at > now,
            grants.c.idle_timeout_seconds.is_not(None),
        )
        return [_grant(r._mapping) for r in self._c.execute(query)]

    def limited_grants(self, now: datetime) -> list[str]:
        """Active, unexpired grants that have a call quota."""
        query = select(grants.c.id).where(
            grants.c.status == GrantStatus.ACTIVE.value,
            grants.c.expires_at > now,
            grants.c.max_calls.is_not(None),
        )
        return [str(r.id) for r in self._c.execute(query)]

    def ended_unexpired(
        self, now: datetime, *, since: datetime | None = None
    ) -> list[tuple[str, datetime]]:
        """Grants ended early (revoked/released) whose tokens would still be in date;
        with ``since``, only those ended at or after it."""
        early = (GrantStatus.REVOKED.value, GrantStatus.RELEASED.value)
        if since is not None:
            # Driven by the ended_at index alone (few rows), filtered here: with the status
            # condition in SQL, planners scan every revocation through the status index.
            recent = select(grants.c.id, grants.c.expires_at, grants.c.status).where(
                grants.c.ended_at >= since
            )
            return [
                (r.id, r.expires_at)
                for r in self._c.execute(recent)
                if r.status in early and r.expires_at > now
            ]
        query = select(grants.c.id, grants.c.expires_at).where(
            grants.c.status.in_(early), grants.c.expires_at > now
        )
        return [(r.id, r.expires_at) for r in self._c.execute(query)]
