"""State machines of requests and grants.

A request moves only from ``pending`` to one final state; a grant only from
``active`` to one final state. Anything else raises :class:`Conflict` (409 at the edge):
a decided request stays decided and nothing silently no-ops.
"""

from __future__ import annotations

import hashlib
import json
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


def terms_hash(request: AccessRequest) -> str:
    """SHA-256 of what approving ``request`` now would grant, and of why it was asked.

    An approval records the hash its approver was shown; when the terms change (an
    approver narrows them), earlier approvals stop counting.
    """
    scopes, duration = request.terms
    terms = {
        "id": request.id,
        "requester": request.requester,
        "api": request.api,
        "scopes": list(scopes),
        "duration_seconds": int(duration.total_seconds()),
        "starts_at": request.starts_at.isoformat() if request.starts_at else None,
        "reason": request.reason,
        "ticket": request.ticket,
        "extends_grant": request.extends_grant,
    }
    encoded = json.dumps(terms, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode()).hexdigest()


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
