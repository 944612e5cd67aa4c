"""Slack's Approve and Deny buttons: only a correctly signed click by an eligible, linked
user counts, and it counts exactly as an approval through the API would."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import func, select

from jitgate.audit.events import EventType
from jitgate.notify.messages import APPROVE_ACTION, DENY_ACTION
from jitgate.notify.signing import slack_signature
from jitgate.storage.tables import approvals
from tests.conftest import ListSink
from tests.control.conftest import assert_problem
from tests.notify.conftest import SIGNING_SECRET, Harness

pytestmark = pytest.mark.anyio

PATH = "/v1/slack/interactions"


def click(
    request_id: str,
    user: str,
    action: str = APPROVE_ACTION,
    *,
    value: str | None = None,
    team: str = "T_ACME",
) -> dict[str, Any]:
    """A block_actions payload as Slack sends it (trimmed to what matters)."""
    return {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "team_id": team},
        "team": {"id": team, "domain": "acme"},
        "actions": [
            {
                "type": "button",
                "action_id": action,
                "block_id": f"jitgate:{request_id}",
                "value": value or json.dumps({"request": request_id}),
            }
        ],
        "response_url": "https://hooks.slack.com/actions/T_ACME/1/xyz",
    }


def form(payload: Any) -> bytes:
    return urlencode({"payload": json.dumps(payload)}).encode()


def send(
    h: Harness,
    body: bytes,
    *,
    at: float | None = None,
    secret: str = SIGNING_SECRET,
    tamper: Callable[[dict[str, str]], None] | None = None,
) -> httpx.Response:
    timestamp = str(int(h.clock.timestamp() if at is None else at))
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": slack_signature(secret, timestamp, body),
    }
    if tamper is not None:
        tamper(headers)
    return h.api.post(PATH, headers=headers, content=body)


def votes(h: Harness) -> int:
    with h.store.read() as tx:
        return int(tx.connection.execute(select(func.count()).select_from(approvals)).scalar_one())


def audit_types(h: Harness) -> list[str]:
    with h.store.read() as tx:
        return [e.type for e in tx.audit.stream()]


async def test_a_signed_click_by_an_eligible_approver_counts(harness: Harness) -> None:
    h = harness
    created = h.pending_write("rita")
    # The button exactly as the approvers' Slack message carries it.
    [message] = [n.payload for n in h.rows(channel="slack")]
    [actions] = [b for b in message["blocks"] if b["type"] == "actions"]
    approve = next(e for e in actions["elements"] if e["action_id"] == APPROVE_ACTION)

    answer = send(h, form(click(created["id"], "U_DAVE", value=approve["value"])))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "response_type": "ephemeral",
        "replace_original": False,
        "text": f"Approved: request {created['id']} is granted.",
    }
    request = h.api.ok("GET", f"/v1/requests/{created['id']}", "rita")
    assert request["status"] == "approved"
    with h.store.read() as tx:
        [event] = [e for e in tx.audit.stream() if e.type == EventType.REQUEST_APPROVED]
    assert (event.actor, event.request, event.data["comment"]) == (
        "dave",
        created["id"],
        "via Slack",
    )
    assert "grant.issued" in audit_types(h)


async def test_a_click_on_terms_that_changed_since_counts_nothing(harness: Harness) -> None:
    h = harness
    created = h.pending_write("rita")
    [message] = [n.payload for n in h.rows(channel="slack")]
    [actions] = [b for b in message["blocks"] if b["type"] == "actions"]
    shown = json.loads(actions["elements"][0]["value"])
    assert shown["request"] == created["id"]
    assert len(shown["terms_hash"]) == 64  # the terms hash travels with the button
    other_terms = json.dumps({"request": created["id"], "terms_hash": "0" * 64})
    answer = send(h, form(click(created["id"], "U_DAVE", value=other_terms)))
    assert_problem(answer, 409, "request-changed")
    assert votes(h) == 0


async def test_a_signed_deny_click_denies(harness: Harness) -> None:
    h = harness
    created = h.pending_write("rita")
    answer = send(h, form(click(created["id"], "U_DAVE", DENY_ACTION)))
    assert answer.status_code == 200, answer.text
    assert answer.json()["text"] == f"Denied: request {created['id']} is closed."
    assert h.api.ok("GET", f"/v1/requests/{created['id']}", "rita")["status"] == "denied"


def _drop(name: str) -> Callable[[dict[str, str]], None]:
    return lambda headers: headers.pop(name)


def _set(name: str, value: str) -> Callable[[dict[str, str]], None]:
    return lambda headers: headers.__setitem__(name, value)


@pytest.mark.parametrize(
    ("user", "options", "status", "code"),
    [
        pytest.param(
            "U_DAVE", {"secret": "not-the-signing-secret"}, 401, "bad-signature", id="wrong-secret"
        ),
        pytest.param("U_DAVE", {"at_offset": -301}, 401, "stale-signature", id="stale"),
        pytest.param("U_DAVE", {"at_offset": 301}, 401, "stale-signature", id="future"),
        pytest.param(
            "U_DAVE", {"tamper": _drop("X-Slack-Signature")}, 401, "bad-signature", id="unsigned"
        ),
        pytest.param(
            "U_DAVE",
            {"tamper": _drop("X-Slack-Request-Timestamp")},
            401,
            "bad-signature",
            id="no-timestamp",
        ),
        pytest.param(
            "U_DAVE",
            {"tamper": _set("X-Slack-Signature", "v0=" + "0" * 64)},
            401,
            "bad-signature",
            id="forged",
        ),
        pytest.param("U_NOBODY", {}, 403, "unknown-slack-user", id="unknown-slack-user"),
        pytest.param("U_ERIN", {}, 403, "not-eligible", id="not-an-approver"),
        pytest.param("U_RITA", {}, 403, "self-approval", id="own-request"),
        pytest.param(
            "U_DAVE",
            {"team": "T_OTHER", "linked_team": True},
            403,
            "unknown-slack-user",
            id="other-workspace",
        ),
    ],
)
async def test_refused_clicks_count_nothing(
    harness: Harness, user: str, options: dict[str, Any], status: int, code: str
) -> None:
    h = harness
    created = h.pending_write("rita")
    if options.get("linked_team"):
        with h.store.transaction() as tx:
            dave = tx.directory.get_principal("dave")
            assert dave is not None
            linked = {**dave.attributes, "slack_team_id": "T_ACME"}
            tx.directory.update_principal(replace(dave, attributes=linked))
    for action in (APPROVE_ACTION, DENY_ACTION):
        body = form(click(created["id"], user, action, team=options.get("team", "T_ACME")))
        answer = send(
            h,
            body,
            at=h.clock.timestamp() + options.get("at_offset", 0),
            secret=options.get("secret", SIGNING_SECRET),
            tamper=options.get("tamper"),
        )
        assert_problem(answer, status, code)
    assert votes(h) == 0
    assert h.api.ok("GET", f"/v1/requests/{created['id']}", "rita")["status"] == "pending"
    assert not {"request.approved", "request.denied"} & set(audit_types(h))
    if status == 401:
        sink = h.ctx.audit
        assert isinstance(sink, ListSink)
        failures = [e for e in sink.events if e.type == EventType.AUTH_FAILED]
        assert [e.data["credential"] for e in failures] == ["slack-signature"] * 2
        assert failures[0].data["path"] == PATH


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"payload=not-json", id="not-json"),
        pytest.param(b"other=1", id="no-payload"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(form([1, 2]), id="not-an-object"),
        pytest.param(form({"type": "view_submission"}), id="other-interaction"),
        pytest.param(form({**click("req_x", "U_DAVE"), "actions": []}), id="no-action"),
        pytest.param(form(click("req_x", "U_DAVE", "jitgate_delete")), id="unknown-action"),
        pytest.param(form(click("req_x", "U_DAVE", value="{")), id="bad-value"),
        pytest.param(form(click("req_x", "U_DAVE", value="[1]")), id="value-not-an-object"),
        pytest.param(
            form(click("req_x", "U_DAVE", value='{"request": "req_x", "terms_hash": 5}')),
            id="bad-terms-hash",
        ),
        pytest.param(form(click("req_x", "U_DAVE", value='{"request": 7}')), id="no-request"),
        pytest.param(form({**click("req_x", "U_DAVE"), "user": "U_DAVE"}), id="bad-user"),
        pytest.param(form(click("req_x", "U\x00DAVE")), id="nul"),
    ],
)
async def test_a_signed_but_malformed_payload_is_a_clear_4xx(harness: Harness, body: bytes) -> None:
    assert_problem(send(harness, body), 422, "bad-slack-payload")
    assert votes(harness) == 0


async def test_unknown_or_decided_requests_and_oversized_bodies(harness: Harness) -> None:
    h = harness
    assert_problem(send(h, form(click("req_nope", "U_DAVE"))), 404, "request-not-found")
    created = h.pending_write("rita")
    assert send(h, form(click(created["id"], "U_DAVE"))).status_code == 200
    again = send(h, form(click(created["id"], "U_DAVE", DENY_ACTION)))  # a replay or a late click
    assert_problem(again, 409, "request-decided")
    big = form({**click(created["id"], "U_DAVE"), "padding": "x" * 70_000})
    assert_problem(send(h, big), 422, "body-too-large")


async def test_without_slack_configured_the_endpoint_refuses(harness: Harness) -> None:
    harness.ctx.slack_signing_secret = None
    created = harness.pending_write("rita")
    assert_problem(send(harness, form(click(created["id"], "U_DAVE"))), 401, "unauthenticated")
    assert votes(harness) == 0
