"""Routes of the policy tools: ``POST /v1/policy/replay`` (administrators).

The candidate policy travels as its YAML text, so the server never reads a path the
caller names; ``source`` is only the name its errors are reported under.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import Field

from jitgate.control.deps import Caller, Ctx
from jitgate.control.schemas import Body, Duration, iso
from jitgate.services.replay import MAX_EXAMINED, Changed, Replay, replay

router = APIRouter(prefix="/v1")

MAX_POLICY_TEXT = 1_000_000  # characters; far above any real policy


class ReplayIn(Body):
    policy: str = Field(max_length=MAX_POLICY_TEXT, description="the candidate policy (YAML)")
    since: Duration = Field(default="30d", description="how far back: 30d, 12h, … or seconds")
    source: str = Field(
        default="candidate", min_length=1, max_length=200, description="names it in errors"
    )


def _changed_json(changed: Changed) -> dict[str, Any]:
    request, old, new = changed.request, changed.request.decision, changed.new
    return {
        "request": request.id,
        "created_at": iso(request.created_at),
        "requester": request.requester,
        "api": request.api,
        "scopes": list(request.scopes),
        "duration_seconds": int(request.duration.total_seconds()),
        "status": request.status.value,
        "change": changed.change.value,
        "old": {
            "outcome": old.outcome.value,
            "rule": old.rule,
            "approvals_required": old.approvals_required,
            "policy_version": old.policy_version,
        },
        "new": {
            "outcome": new.outcome.value,
            "rule": new.rule,
            "approvals_required": new.approvals_required,
            "reasons": list(new.reasons),
            "risk": new.risk.as_dict(),
        },
    }


def replay_json(done: Replay) -> dict[str, Any]:
    return {
        "candidate": {
            "digest": done.candidate.digest,
            "source": done.candidate.source,
            "rules": len(done.candidate.rules),
        },
        "since": iso(done.since),
        "until": iso(done.until),
        "limit": MAX_EXAMINED,
        "examined": done.examined,
        "truncated": done.truncated,
        "oldest_examined": iso(done.oldest_examined),
        "unchanged": done.unchanged,
        "skipped": {skip.value: count for skip, count in done.skipped.items()},
        "counts": {change.value: count for change, count in done.counts().items()},
        "changes": [_changed_json(c) for c in done.changes],
    }


@router.post("/policy/replay", tags=["policy"])
def replay_policy(body: ReplayIn, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    """Re-decide the requests filed since ``since`` under a candidate policy and report
    what would change (administrators). Read-only; a candidate that does not load is a
    422 naming file and line."""
    return replay_json(replay(ctx, caller, body.policy, since=body.since, source=body.source))
