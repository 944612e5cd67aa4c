"""State machines of requests and grants.

A request moves only from ``pending`` to one final state; a grant only from
``active`` to one final state. Anything else raises :class:`Conflict` (409 at the edge):
a decided request stays decided and nothing silently no-ops.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from jitgate.domain.models import AccessRequest, Grant, GrantStatus, RequestStatus
from jitgate.errors import Conflict


def close_request(
    request: AccessRequest,
    status: RequestStatus,
    at: datetime,
    grant_id: str | None = None,
) -> AccessRequest:
    if status is RequestStatus.PENDING:
        raise ValueError("a request cannot be moved back to pending")
    if request.status is not RequestStatus.PENDING:
        raise Conflict(
            f"request {request.id} is already {request.status.value}", code="request-decided"
        )
    return replace(request, status=status, decided_at=at, grant_id=grant_id)


def end_grant(
    grant: Grant,
    status: GrantStatus,
    at: datetime,
    by: str,
    reason: str,
) -> Grant:
    if status is GrantStatus.ACTIVE:
        raise ValueError("a grant cannot be moved back to active")
    if grant.status is not GrantStatus.ACTIVE:
        raise Conflict(f"grant {grant.id} is already {grant.status.value}", code="grant-ended")
    if status is not GrantStatus.EXPIRED and at >= grant.expires_at:
        raise Conflict(f"grant {grant.id} has already expired", code="grant-ended")
    return replace(grant, status=status, ended_at=at, ended_by=by, end_reason=reason)
