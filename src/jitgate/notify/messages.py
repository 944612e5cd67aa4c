"""What a notification says: the webhook JSON body and the Slack Block Kit messages.

Pure: a :class:`Notice` (gathered by the router in the transaction of the change) in,
JSON values out. The webhook body is a wire format: version 1, fields are only ever
added, never renamed or removed. Nothing here ever carries a secret; text that a
requester typed (the reason, a comment) is escaped before it reaches Slack, so it cannot
mention ``@channel`` or forge a link.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from jitgate.audit.events import format_at
from jitgate.storage.outbox_repo import Priority

WEBHOOK_BODY_VERSION = 1
APPROVE_ACTION = "jitgate_approve"
DENY_ACTION = "jitgate_deny"
_MAX_TEXT = 2900  # Slack refuses a section text above 3000 characters


@dataclass(frozen=True, slots=True)
class Notice:
    """One thing to announce, and to whom (``approvers``, ``requester`` or ``grantee``)."""

    type: str
    audience: str
    at: datetime
    priority: Priority = Priority.NORMAL
    actor: str | None = None
    request: dict[str, Any] | None = None  # id, requester, api, scopes, duration, reason, …
    grant: dict[str, Any] | None = None  # id, principal, api, scopes, expires_at, …
    event: dict[str, Any] | None = None  # the audit event announced (None: grant.expiring)
    recipients: dict[str, list[str]] = field(default_factory=dict)  # principals, groups
    terms_hash: str | None = None


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return str(value)


def _comment(notice: Notice) -> str:
    data = (notice.event or {}).get("data") or {}
    comment = data.get("comment") or data.get("reason") or ""
    reasons = data.get("reasons")
    if not comment and isinstance(reasons, list):
        comment = "; ".join(str(r) for r in reasons)
    return f": {comment}" if comment else ""


def summary(notice: Notice) -> str:
    """One line of plain text saying what happened."""
    r, g = notice.request or {}, notice.grant or {}
    by = notice.actor or "someone"
    rid, gid = r.get("id", "?"), g.get("id", "?")
    api = r.get("api") or g.get("api") or "?"
    scopes = ", ".join(r.get("scopes") or g.get("scopes") or [])
    data = (notice.event or {}).get("data") or {}
    match notice.type:
        case "request.decided":
            return (
                f"{r.get('requester', '?')} asks for {scopes} on {api} "
                f"for {r.get('duration', '?')}: {r.get('reason', '')}"
            )
        case "request.approved":
            count = f" ({data['approvals']}/{data['required']})" if "required" in data else ""
            return f"{by} approved request {rid} on {api}{count}{_comment(notice)}"
        case "request.denied":
            return f"Request {rid} on {api} was denied by {by}{_comment(notice)}"
        case "request.cancelled":
            return f"Request {rid} on {api} was cancelled by {by}"
        case "request.expired":
            return f"Request {rid} on {api} expired without a decision"
        case "grant.issued" if notice.priority is Priority.HIGH:
            return (
                f"Break-glass access: {g.get('principal', '?')} holds {scopes} on {api} "
                f"until {_when(g.get('expires_at'))} (grant {gid}); review it"
            )
        case "grant.issued":
            return f"Access granted: {scopes} on {api} until {_when(g.get('expires_at'))}"
        case "grant.revoked":
            return f"Grant {gid} on {api} was revoked by {by}{_comment(notice)}"
        case "grant.expiring":
            return f"Grant {gid} on {api} expires at {_when(g.get('expires_at'))}"
        case _:
            return f"{notice.type} on {api}"


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_at(value)
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value


def webhook_body(notice: Notice, notification_id: str, control_url: str) -> dict[str, Any]:
    """The JSON a webhook receives (see docs/notifications.md for every field)."""
    links: dict[str, str] = {}
    if notice.request:
        links["request"] = f"{control_url}/v1/requests/{notice.request['id']}"
    if notice.grant:
        links["grant"] = f"{control_url}/v1/grants/{notice.grant['id']}"
    body = {
        "version": WEBHOOK_BODY_VERSION,
        "id": notification_id,
        "type": notice.type,
        "priority": notice.priority.value,
        "audience": notice.audience,
        "at": format_at(notice.at),
        "text": summary(notice),
        "recipients": notice.recipients,
        "request": notice.request,
        "grant": notice.grant,
        "event": notice.event,
        "links": links,
    }
    result: dict[str, Any] = _json_value(body)
    return result


def escape(text: str) -> str:
    """Slack's mrkdwn escaping: ``&``, ``<`` and ``>`` only (which is what Slack asks)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": escape(text)[:_MAX_TEXT]}}


def _fields(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "type": "section",
        "fields": [
            {"type": "mrkdwn", "text": f"*{name}*\n{escape(value)[:1900]}"}
            for name, value in pairs[:10]
        ],
    }


def _button_value(notice: Notice) -> str:
    value = {"request": (notice.request or {}).get("id")}
    if notice.terms_hash:
        value["terms_hash"] = notice.terms_hash
    return json.dumps(value, separators=(",", ":"))


def slack_approval(notice: Notice, channel: str) -> dict[str, Any]:
    """The approvers' message: the request at a glance, with Approve and Deny buttons."""
    r = notice.request or {}
    pairs = [
        ("Requester", str(r.get("requester", "?"))),
        ("API", str(r.get("api", "?"))),
        ("Scopes", "\n".join(r.get("scopes") or [])),
        ("Duration", str(r.get("duration", "?"))),
        ("Risk", str(r.get("risk", "?"))),
        ("Rule", str(r.get("rule") or "-")),
        ("Approvals needed", str(r.get("approvals_required", "?"))),
    ]
    if r.get("ticket"):
        pairs.append(("Ticket", str(r["ticket"])))
    value = _button_value(notice)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": "Access request"}},
        _fields(pairs),
        _section(f"Reason: {r.get('reason', '')}"),
        {
            "type": "actions",
            "block_id": f"jitgate:{r.get('id', '')}",
            "elements": [
                {
                    "type": "button",
                    "action_id": APPROVE_ACTION,
                    "style": "primary",
                    "text": {"type": "plain_text", "text": "Approve"},
                    "value": value,
                },
                {
                    "type": "button",
                    "action_id": DENY_ACTION,
                    "style": "danger",
                    "text": {"type": "plain_text", "text": "Deny"},
                    "value": value,
                },
            ],
        },
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"request {r.get('id')}"}]},
    ]
    return {"channel": channel, "text": escape(summary(notice))[:_MAX_TEXT], "blocks": blocks}


def slack_update(notice: Notice, channel: str) -> dict[str, Any]:
    """A message without buttons: to a requester or grantee, or a break-glass alert."""
    text = summary(notice)
    blocks: list[dict[str, Any]] = []
    if notice.priority is Priority.HIGH:
        blocks.append(
            {
                "type": "header",
                "text": {"type": "plain_text", "text": ":rotating_light: Break-glass access"},
            }
        )
    blocks.append(_section(text))
    return {"channel": channel, "text": escape(text)[:_MAX_TEXT], "blocks": blocks}
