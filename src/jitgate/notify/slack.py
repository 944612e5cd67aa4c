"""Slack's Approve and Deny buttons: from a signed interaction to a counted vote.

The interaction endpoint has no principal token: Slack's request signature (checked by
:func:`jitgate.notify.signing.verify_slack` before anything here runs) is the only
credential, and it proves only that Slack sent the click. Who clicked is the Slack user
id, mapped to exactly one principal whose ``slack_user_id`` attribute equals it (and
whose ``slack_team_id``, if set, equals the workspace's). The vote then goes through
:func:`jitgate.services.access.approve` / ``deny`` like any other, so self-approval,
eligibility, repeat votes and decided requests are judged in one place. An approval
is bound to the terms hash the button carries: if the request changed since the message
was posted, the click is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from jitgate.domain.models import Principal, RequestStatus
from jitgate.errors import Forbidden, InvalidInput
from jitgate.notify.messages import APPROVE_ACTION, DENY_ACTION
from jitgate.services import access
from jitgate.services.context import Context

MAX_BODY = 64 * 1024  # bytes; Slack's block_actions payloads are a few kilobytes
COMMENT = "via Slack"


@dataclass(frozen=True, slots=True)
class SlackClick:
    user_id: str
    team_id: str | None
    approve: bool
    request_id: str
    terms_hash: str | None  # the request's terms as the message showed them


def _text(value: Any, what: str, limit: int = 64) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or "\x00" in value:
        raise InvalidInput(f"the Slack payload has no valid {what}", code="bad-slack-payload")
    return value


def parse_click(body: bytes) -> SlackClick:
    """The button click in a form-encoded ``payload=<json>`` body; ``InvalidInput`` if none."""
    try:
        form = parse_qs(body.decode("utf-8"), strict_parsing=True, max_num_fields=10)
        payload = json.loads(form["payload"][0])
    except (UnicodeDecodeError, ValueError, KeyError, RecursionError) as exc:
        raise InvalidInput(
            "expected a form field 'payload' holding Slack's JSON", code="bad-slack-payload"
        ) from exc
    if not isinstance(payload, dict) or payload.get("type") != "block_actions":
        raise InvalidInput("only block_actions interactions are handled", code="bad-slack-payload")
    user, team, actions = payload.get("user"), payload.get("team"), payload.get("actions")
    if not isinstance(user, dict) or not isinstance(actions, list) or len(actions) != 1:
        raise InvalidInput("expected one action by one user", code="bad-slack-payload")
    action = actions[0] if isinstance(actions[0], dict) else {}
    kind = action.get("action_id")
    if kind not in (APPROVE_ACTION, DENY_ACTION):
        raise InvalidInput(f"unknown action {str(kind)[:64]!r}", code="bad-slack-payload")
    try:
        value = json.loads(_text(action.get("value"), "button value", 2000))
    except (ValueError, RecursionError) as exc:  # json.loads recurses once per level
        raise InvalidInput("the button value is not JSON", code="bad-slack-payload") from exc
    if not isinstance(value, dict):
        raise InvalidInput("the button value is not a JSON object", code="bad-slack-payload")
    terms = value.get("terms_hash")
    return SlackClick(
        user_id=_text(user.get("id"), "user id"),
        team_id=_text(team.get("id"), "team id") if isinstance(team, dict) else None,
        approve=kind == APPROVE_ACTION,
        request_id=_text(value.get("request"), "request id"),
        terms_hash=None if terms is None else _text(terms, "terms hash"),
    )


def principal_for(ctx: Context, click: SlackClick) -> Principal:
    """The one principal this Slack user is; ``Forbidden`` if none or several."""
    with ctx.store.read() as tx:
        found = [
            p
            for p in tx.directory.list_principals()
            if p.attributes.get("slack_user_id") == click.user_id
            and p.attributes.get("slack_team_id", click.team_id) == click.team_id
        ]
    if len(found) != 1:
        detail = "is not linked to any principal" if not found else "is linked to several"
        raise Forbidden(
            f"Slack user {click.user_id} {detail} (attribute slack_user_id)",
            code="unknown-slack-user",
        )
    return found[0]


def act(ctx: Context, body: bytes) -> dict[str, Any]:
    """Count a (signature-checked) click as an approval or a denial; Slack's answer."""
    click = parse_click(body)
    principal = principal_for(ctx, click)
    if click.approve:
        view = access.approve(ctx, principal, click.request_id, COMMENT, terms=click.terms_hash)
        outcome = (
            f"Approved: request {click.request_id} is granted."
            if view.grant is not None
            else f"Your approval of request {click.request_id} is counted; more are needed."
        )
    else:
        view = access.deny(ctx, principal, click.request_id, COMMENT)
        outcome = (
            f"Denied: request {click.request_id} is closed."
            if view.request.status is RequestStatus.DENIED
            else f"Your denial of request {click.request_id} is counted."
        )
    return {"response_type": "ephemeral", "replace_original": False, "text": outcome}
