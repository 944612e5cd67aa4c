"""Replay: what a candidate policy would have decided about the requests already filed.

Guarantees:

* Read-only: nothing is written, the policy in force is untouched, and a candidate that
  does not load is refused (:class:`CandidateRejected`, a 422) with the loader's
  ``file:line`` errors.
* Administrators only (the answer shows who asked for what).
* The history is the ``access_requests`` table: every request filed since ``since``,
  newest first, at most :data:`MAX_EXAMINED` (``truncated`` says so when there were
  more). Each is re-decided with its own terms as filed (scopes, duration, reason,
  ticket, start — not an approver's narrowing), at its own time (``now`` is its
  ``created_at``), with the requester's recent denials as of that moment (requests
  denied by then, within the candidate's ``recent_denials_window``), and with the
  requester and API *as stored now*.
* Requests that cannot be re-decided faithfully are counted in ``skipped``, never
  guessed: extensions (their decision also depends on the grant chain at the time), and
  requests whose requester or API no longer exists.
* Each re-decided request is unchanged or falls in exactly one :class:`Change` class,
  compared with the decision stored when it was filed.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from jitgate.domain.durations import parse_duration
from jitgate.domain.models import AccessRequest, Api, Decision, Outcome, Principal
from jitgate.domain.scopes import parse_scope
from jitgate.errors import ConfigError, InvalidInput
from jitgate.policy import Subject, evaluate, parse_policy
from jitgate.policy.model import Policy
from jitgate.services.context import Context, require_admin
from jitgate.storage.access_repo import Denial

MAX_EXAMINED = 10_000


class CandidateRejected(InvalidInput):
    """The candidate policy does not load."""

    code = "policy-invalid"


class Change(StrEnum):
    """How a request's decision changes under the candidate. Append-only (a wire value)."""

    NEWLY_AUTO_APPROVED = "newly_auto_approved"  # approved at once (auto or break glass)
    NEWLY_DENIED = "newly_denied"
    NEWLY_NEEDS_APPROVAL = "newly_needs_approval"
    RULE_CHANGED = "rule_changed"  # same outcome, another rule or other approval steps


class Skip(StrEnum):
    """Why a request was not re-decided. Append-only (a wire value)."""

    EXTENSION = "extension"
    REQUESTER_GONE = "requester_gone"
    API_GONE = "api_gone"


@dataclass(frozen=True, slots=True)
class Changed:
    request: AccessRequest
    change: Change
    new: Decision


@dataclass(frozen=True, slots=True)
class Replay:
    candidate: Policy
    since: datetime
    until: datetime
    examined: int
    truncated: bool
    oldest_examined: datetime | None
    unchanged: int
    skipped: dict[Skip, int]
    changes: list[Changed]

    def counts(self) -> dict[Change, int]:
        counts = dict.fromkeys(Change, 0)
        for changed in self.changes:
            counts[changed.change] += 1
        return counts


def replay(
    ctx: Context,
    actor: Principal,
    policy_text: str,
    *,
    since: str | int = "30d",
    source: str = "candidate",
) -> Replay:
    """Re-decide the requests filed in the last ``since`` under ``policy_text``."""
    require_admin(actor.is_admin, "replay a policy")
    window = parse_duration(since)
    try:
        candidate = parse_policy(policy_text, source)
    except ConfigError as exc:
        raise CandidateRejected(exc.detail) from exc
    until = ctx.now()
    start = until - window
    denials_window = candidate.risk.recent_denials_window
    with ctx.store.read() as tx:
        newest_first = tx.access.requests_since(start, limit=MAX_EXAMINED + 1)
        truncated = len(newest_first) > MAX_EXAMINED
        requests = newest_first[:MAX_EXAMINED][::-1]
        principals = {p.id: p for p in tx.directory.list_principals()}
        apis = {a.name: a for a in tx.directory.list_apis()}
        denials = (
            tx.access.denials_between(requests[0].created_at - denials_window, until)
            if requests
            else []
        )
    history = _DenialHistory(denials, denials_window)
    skipped = dict.fromkeys(Skip, 0)
    changes: list[Changed] = []
    unchanged = 0
    for request in requests:
        skip = _skip(request, principals, apis)
        if skip is not None:
            skipped[skip] += 1
            continue
        subject = Subject(
            principal=principals[request.requester],
            api=apis[request.api],
            scopes=tuple(parse_scope(s) for s in request.scopes),
            duration=request.duration,
            now=request.created_at,
            reason=request.reason,
            ticket=request.ticket,
            starts_at=request.starts_at,
            recent_denials=history.count(request),
        )
        new = evaluate(candidate, subject).decision
        change = classify(request.decision, new)
        if change is None:
            unchanged += 1
        else:
            changes.append(Changed(request, change, new))
    return Replay(
        candidate=candidate,
        since=start,
        until=until,
        examined=len(requests),
        truncated=truncated,
        oldest_examined=requests[0].created_at if requests else None,
        unchanged=unchanged,
        skipped=skipped,
        changes=changes,
    )


def classify(old: Decision, new: Decision) -> Change | None:
    """The change from ``old`` to ``new``, or None when they decide alike."""
    if new.outcome is not old.outcome:
        return {
            Outcome.APPROVE: Change.NEWLY_AUTO_APPROVED,
            Outcome.DENY: Change.NEWLY_DENIED,
            Outcome.NEEDS_APPROVAL: Change.NEWLY_NEEDS_APPROVAL,
        }[new.outcome]
    alike = (
        new.rule == old.rule
        and new.break_glass == old.break_glass
        and [s.as_dict() for s in new.steps] == [s.as_dict() for s in old.steps]
    )
    return None if alike else Change.RULE_CHANGED


def _skip(
    request: AccessRequest, principals: dict[str, Principal], apis: dict[str, Api]
) -> Skip | None:
    if request.extends_grant is not None:
        return Skip.EXTENSION
    if request.requester not in principals:
        return Skip.REQUESTER_GONE
    if request.api not in apis:
        return Skip.API_GONE
    return None


class _DenialHistory:
    """How many of a requester's requests had been denied when another was filed.

    As the engine saw it then: denied requests filed within the window before it (or at
    the same instant), already decided by then, other than the request itself.
    """

    def __init__(self, denials: list[Denial], window: timedelta) -> None:
        self._window = window
        self._by_requester: dict[str, list[Denial]] = defaultdict(list)
        for denial in denials:  # oldest first, so each list is sorted by created_at
            self._by_requester[denial.requester].append(denial)
        self._times = {
            requester: [d.created_at for d in items]
            for requester, items in self._by_requester.items()
        }

    def count(self, request: AccessRequest) -> int:
        items = self._by_requester.get(request.requester, [])
        times = self._times.get(request.requester, [])
        at = request.created_at
        low = bisect_left(times, at - self._window)
        high = bisect_right(times, at)
        return sum(
            1
            for denial in items[low:high]
            if denial.request_id != request.id
            and denial.decided_at is not None
            and denial.decided_at <= at
        )
