"""From audit events to outbox rows, inside the transaction that writes the events.

The store calls :class:`NotifyRouter` after every audit append (see
:mod:`jitgate.storage.store`), so a notification is committed exactly when the change it
announces is, and survives any crash after that. Who is told what:

* ``request.decided``, only when the request awaits approval: the approvers. On Slack,
  in the rule's ``notify.slack_channel`` (else the default channel), with Approve and
  Deny buttons.
* ``request.approved``, ``request.denied``, ``request.cancelled``, ``request.expired``:
  the requester; ``grant.issued``, ``grant.revoked``: the grantee. On Slack, a direct
  message to the principal's ``slack_user_id`` attribute — never about their own action.
* ``grant.issued`` of a break-glass or to-be-reviewed grant is ``high`` priority, and
  also goes to the default Slack channel.
* ``grant.expiring`` (:meth:`NotifyRouter.warn_expiring`, not an audit event): the
  grantee, once per grant, ``expiry_warning`` before it ends.

Webhooks receive each of these whose type matches one of their ``events`` patterns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from jitgate.audit.events import ChainedEvent
from jitgate.clock import Clock
from jitgate.config import NotificationSettings
from jitgate.domain.durations import format_duration
from jitgate.notify.kinds import GRANT_EXPIRING, matches
from jitgate.notify.messages import Notice, slack_approval, slack_update, webhook_body
from jitgate.services.context import new_id
from jitgate.storage.outbox_repo import (
    Channel,
    ExpiringGrant,
    Notification,
    NotificationStatus,
    Priority,
)
from jitgate.storage.store import Store, Tx

_TO_REQUESTER = frozenset(
    {"request.approved", "request.denied", "request.cancelled", "request.expired"}
)
_TO_GRANTEE = frozenset({"grant.issued", "grant.revoked"})
_TARGET_LENGTH = 64  # the outbox's target column; the full channel is in the payload


class NotifyRouter:
    def __init__(self, settings: NotificationSettings, *, control_url: str) -> None:
        self._settings = settings
        self._control_url = control_url.rstrip("/")

    # the store's hook ---------------------------------------------------------------
    def __call__(self, tx: Tx, events: Sequence[ChainedEvent]) -> None:
        for event in events:
            notice = self._notice(tx, event)
            if notice is not None:
                self._enqueue(tx, notice, _slack_targets(tx, notice, event, self._settings))

    def _notice(self, tx: Tx, event: ChainedEvent) -> Notice | None:
        data = event.data
        if event.type == "request.decided":
            if data.get("outcome") != "needs_approval" or not event.request:
                return None
            audience, recipients = "approvers", _approvers(data)
        elif event.type in _TO_REQUESTER:
            audience, recipients = "requester", {"principals": [event.principal or ""]}
        elif event.type in _TO_GRANTEE:
            audience, recipients = "grantee", {"principals": [event.principal or ""]}
        else:
            return None
        urgent = event.type == "grant.issued" and bool(
            data.get("break_glass") or data.get("needs_review")
        )
        terms_hash = data.get("terms_hash")
        return Notice(
            type=event.type,
            audience=audience,
            at=event.at,
            priority=Priority.HIGH if urgent else Priority.NORMAL,
            actor=event.actor,
            request=_request(tx, event),
            grant=_grant(tx, event.grant, data),
            event=event.as_dict(),
            recipients=recipients,
            terms_hash=terms_hash if isinstance(terms_hash, str) else None,
        )

    def _enqueue(
        self,
        tx: Tx,
        notice: Notice,
        slack: list[tuple[str, bool]],
        *,
        dedupe: str | None = None,
    ) -> int:
        """One row per subscribed webhook and per Slack destination (``(channel, with
        buttons)``); with ``dedupe``, a row whose key exists already is not written again.
        The number of rows written."""

        def add(channel: Channel, target: str, payload: dict[str, Any], nid: str) -> bool:
            return tx.outbox.add(
                Notification(
                    id=nid,
                    channel=channel,
                    target=target[:_TARGET_LENGTH],
                    event_type=notice.type,
                    priority=notice.priority,
                    payload=payload,
                    status=NotificationStatus.PENDING,
                    attempts=0,
                    next_attempt_at=notice.at,
                    created_at=notice.at,
                    dedupe_key=f"{dedupe}:{channel.value}:{target}"[:128] if dedupe else None,
                )
            )

        written = 0
        for hook in self._settings.webhooks:
            if any(matches(pattern, notice.type) for pattern in hook.events):
                nid = new_id("ntf")
                body = webhook_body(notice, nid, self._control_url)
                written += add(Channel.WEBHOOK, hook.name, body, nid)
        for channel, buttons in slack:
            message = slack_approval(notice, channel) if buttons else slack_update(notice, channel)
            written += add(Channel.SLACK, channel, message, new_id("ntf"))
        return written

    # the periodic job -----------------------------------------------------------------
    def warn_expiring(self, store: Store, clock: Clock) -> int:
        """Tell grantees that a grant ends within ``expiry_warning``, once per grant; the
        number of grants newly warned about."""
        now = clock.now()
        warned = 0
        with store.transaction() as tx:
            for grant in tx.outbox.grants_expiring(now, self._settings.expiry_warning):
                notice = _expiring(grant, now)
                slack = _direct(tx, grant.principal, self._settings)
                dedupe = f"{GRANT_EXPIRING}:{grant.id}"
                warned += self._enqueue(tx, notice, slack, dedupe=dedupe) > 0
        return warned


def _approvers(decision: Mapping[str, Any]) -> dict[str, list[str]]:
    """Who may approve, as far as the decision names them (groups, and principals by id)."""
    groups = decision.get("approver_groups")
    steps = decision.get("steps")
    named = {
        str(p)
        for step in (steps if isinstance(steps, list) else ())
        if isinstance(step, dict)
        for p in step.get("principals") or ()
    }
    return {
        "principals": sorted(named),
        "groups": [str(g) for g in groups] if isinstance(groups, list) else [],
    }


def _expiring(grant: ExpiringGrant, now: datetime) -> Notice:
    return Notice(
        type=GRANT_EXPIRING,
        audience="grantee",
        at=now,
        grant={
            "id": grant.id,
            "principal": grant.principal,
            "api": grant.api,
            "scopes": list(grant.scopes),
            "expires_at": grant.expires_at,
            "request": grant.request_id,
        },
        recipients={"principals": [grant.principal]},
    )


def _request(tx: Tx, event: ChainedEvent) -> dict[str, Any] | None:
    if not event.request:
        return None
    request = tx.access.get_request(event.request)
    if request is None:  # not ours to fail the change over: announce what the event says
        return {"id": event.request, "requester": event.principal, "api": event.api}
    decision = request.decision
    return {
        "id": request.id,
        "requester": request.requester,
        "api": request.api,
        "scopes": list(request.scopes),
        "duration": format_duration(request.duration),
        "duration_seconds": int(request.duration.total_seconds()),
        "reason": request.reason,
        "ticket": request.ticket,
        "status": request.status.value,
        "rule": decision.rule,
        "risk": decision.risk.score,
        "approvals_required": decision.approvals_required,
        "approver_groups": sorted(decision.approver_groups),
    }


def _grant(tx: Tx, grant_id: str | None, data: Any) -> dict[str, Any] | None:
    grant = tx.access.get_grant(grant_id) if grant_id else None
    if grant is None:
        return None
    return {
        "id": grant.id,
        "principal": grant.principal,
        "api": grant.api,
        "scopes": list(grant.scopes),
        "not_before": grant.not_before,
        "expires_at": grant.expires_at,
        "status": grant.status.value,
        "request": grant.request_id,
        "break_glass": bool(data.get("break_glass")),
        "needs_review": bool(data.get("needs_review")),
    }


def _direct(
    tx: Tx, principal_id: str | None, settings: NotificationSettings
) -> list[tuple[str, bool]]:
    """A direct message to the principal's Slack user, if Slack is on and they have one."""
    if settings.slack is None or not principal_id:
        return []
    principal = tx.directory.get_principal(principal_id)
    user = principal.attributes.get("slack_user_id") if principal else None
    return [(user, False)] if isinstance(user, str) and user else []


def _slack_targets(
    tx: Tx, notice: Notice, event: ChainedEvent, settings: NotificationSettings
) -> list[tuple[str, bool]]:
    if settings.slack is None:
        return []
    default = settings.slack.default_channel
    if notice.audience == "approvers":
        rule = event.data.get("notify")
        channel = rule.get("slack_channel") if isinstance(rule, dict) else None
        channel = channel if isinstance(channel, str) and channel else default
        return [(channel, True)] if channel else []
    targets = [] if event.actor == event.principal else _direct(tx, event.principal, settings)
    if notice.priority is Priority.HIGH and default:
        targets.append((default, False))
    return targets
