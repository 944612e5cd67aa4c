"""Audit events to outbox rows: who is told what, in the transaction of the change."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jitgate.audit.events import EventType, NewEvent
from jitgate.clock import FrozenClock
from jitgate.control.app import create_app
from jitgate.demo.fixture import set_up_demo
from jitgate.notify.messages import APPROVE_ACTION, DENY_ACTION
from jitgate.notify.router import NotifyRouter
from jitgate.services.context import Context
from jitgate.storage.outbox_repo import Notification
from jitgate.storage.store import Store
from tests.control.conftest import Control
from tests.notify.conftest import (
    AUDIT_SECRET,
    BOT_TOKEN,
    CONTROL_URL,
    OPS_SECRET,
    SIGNING_SECRET,
    add_slack_principals,
    notify_settings,
)

NOWHERE = "http://127.0.0.1:9"  # never contacted: these tests only route


@pytest.fixture
def api(ctx: Context, store: Store, tmp_path: Path, installed: None) -> Iterator[Control]:
    """The control plane with the router installed (webhooks ``ops`` and ``audit``, Slack)."""
    store.router = NotifyRouter(notify_settings(NOWHERE, NOWHERE, NOWHERE), control_url=CONTROL_URL)
    tokens, secret = set_up_demo(ctx, tmp_path, NOWHERE)
    add_slack_principals(ctx, tokens)
    with TestClient(create_app(ctx), raise_server_exceptions=False) as client:
        yield Control(client, tokens, secret.reveal())


def outbox(store: Store) -> list[Notification]:
    with store.read() as tx:
        return sorted(tx.outbox.list_notifications(limit=1000), key=lambda n: (n.channel, n.target))


def destinations(rows: list[Notification]) -> set[tuple[str, str, str]]:
    return {(n.channel.value, n.target, n.priority.value) for n in rows}


def append(store: Store, clock: FrozenClock, kind: EventType, **fields: Any) -> None:
    with store.transaction() as tx:
        tx.audit.append([NewEvent(type=kind, at=clock.now(), api="demo", **fields)])


NEEDS_APPROVAL = {"outcome": "needs_approval", "approver_groups": ["approvers"]}
OPS, AUDIT = ("webhook", "ops", "normal"), ("webhook", "audit", "normal")
HIGH = [("webhook", "ops", "high"), ("webhook", "audit", "high"), ("slack", "U_RITA", "high")]


@pytest.mark.parametrize(
    ("kind", "fields", "expected"),
    [
        pytest.param(
            EventType.REQUEST_DECIDED,
            {"data": {**NEEDS_APPROVAL, "notify": {"slack_channel": "#payments-owners"}}},
            {OPS, ("slack", "#payments-owners", "normal")},
            id="needs-approval-to-the-rule's-channel",
        ),
        pytest.param(
            EventType.REQUEST_DECIDED,
            {"data": NEEDS_APPROVAL},
            {OPS, ("slack", "#access", "normal")},
            id="needs-approval-to-the-default-channel",
        ),
        pytest.param(
            EventType.REQUEST_DECIDED,
            {"data": {**NEEDS_APPROVAL, "notify": {"slack_channel": ""}}},
            {OPS, ("slack", "#access", "normal")},
            id="an-empty-rule-channel-means-the-default",
        ),
        pytest.param(EventType.REQUEST_DECIDED, {"data": {"outcome": "approve"}}, set(), id="auto"),
        pytest.param(EventType.REQUEST_DECIDED, {"data": {"outcome": "deny"}}, set(), id="denied"),
        pytest.param(
            EventType.REQUEST_APPROVED,
            {"actor": "bob", "principal": "rita"},
            {OPS, ("slack", "U_RITA", "normal")},
            id="approved-to-the-requester",
        ),
        pytest.param(
            EventType.REQUEST_DENIED,
            {"actor": "policy", "principal": "alice"},
            {OPS},
            id="no-slack-user-no-direct-message",
        ),
        pytest.param(
            EventType.REQUEST_CANCELLED,
            {"actor": "rita", "principal": "rita"},
            {OPS},
            id="not-told-of-one's-own-action",
        ),
        pytest.param(
            EventType.REQUEST_EXPIRED,
            {"actor": "system", "principal": "rita"},
            {OPS, ("slack", "U_RITA", "normal")},
            id="expired",
        ),
        pytest.param(
            EventType.GRANT_ISSUED,
            {"actor": "bob", "principal": "rita", "data": {"break_glass": False}},
            {OPS, AUDIT, ("slack", "U_RITA", "normal")},
            id="granted",
        ),
        pytest.param(
            EventType.GRANT_ISSUED,
            {"actor": "policy", "principal": "rita", "data": {"break_glass": True}},
            {*HIGH, ("slack", "#access", "high")},
            id="break-glass-is-loud",
        ),
        pytest.param(
            EventType.GRANT_ISSUED,
            {"actor": "policy", "principal": "rita", "data": {"needs_review": True}},
            {*HIGH, ("slack", "#access", "high")},
            id="to-review-is-loud",
        ),
        pytest.param(
            EventType.GRANT_REVOKED,
            {"actor": "bob", "principal": "rita", "data": {"reason": "incident"}},
            {OPS, AUDIT, ("slack", "U_RITA", "normal")},
            id="revoked",
        ),
        pytest.param(EventType.GRANT_RELEASED, {"principal": "rita"}, set(), id="released"),
        pytest.param(EventType.GRANT_EXPIRED, {"principal": "rita"}, set(), id="expired-grant"),
        pytest.param(EventType.ACCESS_ALLOWED, {"principal": "rita"}, set(), id="access"),
        pytest.param(EventType.POLICY_LOADED, {}, set(), id="policy"),
    ],
)
def test_who_is_told_what(
    api: Control,
    store: Store,
    clock: FrozenClock,
    kind: EventType,
    fields: dict[str, Any],
    expected: set[tuple[str, str, str]],
) -> None:
    before = {n.id for n in outbox(store)}
    request = "req_0000000000000001" if kind.value.startswith("request.") else None
    append(store, clock, kind, request=request, **fields)
    new = [n for n in outbox(store) if n.id not in before]
    assert destinations(new) == expected
    assert all(n.event_type == kind.value and n.status.value == "pending" for n in new)
    assert all(n.attempts == 0 and n.next_attempt_at == clock.now() for n in new)


def test_webhooks_get_only_the_types_they_subscribe_to(
    ctx: Context, store: Store, clock: FrozenClock, installed: None
) -> None:
    settings = notify_settings(NOWHERE, NOWHERE, None)
    hooks = [
        hook.model_copy(update={"name": name, "events": events})
        for name, events in (
            ("everything", ["*"]),
            ("requests", ["request.*"]),
            ("grants", ["grant.issued", "grant.expiring"]),
            ("denials", ["request.denied"]),
        )
        for hook in settings.webhooks[:1]
    ]
    store.router = NotifyRouter(
        settings.model_copy(update={"webhooks": hooks}), control_url=CONTROL_URL
    )
    for kind in (EventType.REQUEST_DENIED, EventType.GRANT_ISSUED, EventType.GRANT_REVOKED):
        append(store, clock, kind, principal="x", request="req_1")
    received = {
        name: sorted(n.event_type for n in outbox(store) if n.target == name)
        for name in ("everything", "requests", "grants", "denials")
    }
    assert received == {
        "everything": ["grant.issued", "grant.revoked", "request.denied"],
        "requests": ["request.denied"],
        "grants": ["grant.issued"],
        "denials": ["request.denied"],
    }


def test_a_rolled_back_change_announces_nothing(
    api: Control, store: Store, clock: FrozenClock
) -> None:
    written: list[int] = []

    def failing_change() -> None:
        with store.transaction() as tx:
            tx.audit.append([NewEvent(EventType.GRANT_REVOKED, clock.now(), principal="rita")])
            written.append(len(tx.outbox.list_notifications()))
            raise RuntimeError("the change fails after its audit events")

    with pytest.raises(RuntimeError):
        failing_change()
    assert written == [3]  # written, in the transaction ...
    assert outbox(store) == []  # ... and gone with it


def test_a_request_needing_approval_reaches_approvers_with_buttons(
    api: Control, store: Store
) -> None:
    body = {
        "api": "demo",
        "scopes": ["POST /v1/orders"],
        "duration": "30m",
        "reason": "fix <!channel> & <https://evil.test|order 42>",
        "ticket": "OPS-7",
    }
    created = api.ok("POST", "/v1/requests", "rita", json=body)
    assert created["status"] == "pending"
    rows = {(n.channel.value, n.target): n for n in outbox(store)}
    assert set(rows) == {("webhook", "ops"), ("slack", "#access")}

    hook = rows["webhook", "ops"]
    assert hook.payload["id"] == hook.id
    assert hook.payload["version"] == 1
    assert hook.payload["type"] == "request.decided"
    assert hook.payload["audience"] == "approvers"
    assert hook.payload["recipients"]["groups"] == ["approvers"]
    assert hook.payload["links"]["request"] == f"{CONTROL_URL}/v1/requests/{created['id']}"
    request = hook.payload["request"]
    assert request["id"] == created["id"]
    assert request["requester"] == "rita"
    assert request["scopes"] == ["POST /v1/orders"]
    assert request["duration"] == "30m"
    assert request["reason"] == body["reason"]
    assert request["ticket"] == "OPS-7"
    assert request["approvals_required"] == 1
    assert isinstance(request["risk"], int)
    with store.read() as tx:
        [decided] = [e for e in tx.audit.stream() if e.type == "request.decided"]
    assert hook.payload["event"]["seq"] == decided.seq
    assert hook.payload["event"]["hash"] == decided.hash

    message = rows["slack", "#access"].payload
    assert message["channel"] == "#access"
    assert "<!channel>" not in message["text"]
    assert "&lt;!channel&gt; &amp; &lt;https://evil.test|order 42&gt;" in message["text"]
    [actions] = [b for b in message["blocks"] if b["type"] == "actions"]
    buttons = {e["action_id"]: e for e in actions["elements"]}
    assert set(buttons) == {APPROVE_ACTION, DENY_ACTION}
    assert buttons[APPROVE_ACTION]["style"] == "primary"
    assert buttons[DENY_ACTION]["style"] == "danger"
    assert buttons[APPROVE_ACTION]["value"] == buttons[DENY_ACTION]["value"]
    assert created["id"] in buttons[APPROVE_ACTION]["value"]
    for block in message["blocks"]:
        for text in [block.get("text", {}), *block.get("fields", [])]:
            assert "<!channel>" not in text.get("text", "")


def test_the_requester_hears_of_the_decision_and_the_grant(api: Control, store: Store) -> None:
    created = api.ok(
        "POST",
        "/v1/requests",
        "rita",
        json={"api": "demo", "scopes": ["POST /v1/x"], "duration": "30m", "reason": "fix"},
    )
    before = {n.id for n in outbox(store)}
    approved = api.ok("POST", f"/v1/requests/{created['id']}/approve", "bob", json={})
    new = [n for n in outbox(store) if n.id not in before]
    kinds = {(n.event_type, n.channel.value, n.target) for n in new}
    assert kinds == {
        ("request.approved", "webhook", "ops"),
        ("request.approved", "slack", "U_RITA"),
        ("grant.issued", "webhook", "ops"),
        ("grant.issued", "webhook", "audit"),
        ("grant.issued", "slack", "U_RITA"),
    }
    [issued] = [n for n in new if n.event_type == "grant.issued" and n.target == "ops"]
    assert issued.payload["grant"]["id"] == approved["grant"]["id"]
    assert issued.payload["grant"]["principal"] == "rita"
    assert issued.payload["audience"] == "grantee"
    [dm] = [n for n in new if n.event_type == "request.approved" and n.channel.value == "slack"]
    assert "bob approved request" in dm.payload["text"]
    assert all(b["type"] != "actions" for b in dm.payload["blocks"])


def test_no_row_holds_a_secret(api: Control, store: Store) -> None:
    api.ok(
        "POST",
        "/v1/requests",
        "rita",
        json={"api": "demo", "scopes": ["POST /v1/x"], "duration": "30m", "reason": "fix"},
    )
    api.ok(
        "POST",
        "/v1/requests",
        "rita",
        json={"api": "demo", "scopes": ["GET /x"], "duration": "5m", "reason": "read"},
    )
    rows = outbox(store)
    assert rows
    text = repr([(n.payload, n.target, n.last_error) for n in rows])
    for secret in (OPS_SECRET, AUDIT_SECRET, BOT_TOKEN, SIGNING_SECRET, api.demo_secret):
        assert secret not in text


# expiry warnings --------------------------------------------------------------------


def _grant(api: Control, duration: str) -> str:
    body = {"api": "demo", "scopes": ["GET /v1/**"], "duration": duration, "reason": "read"}
    created = api.ok("POST", "/v1/requests", "rita", json=body)
    assert created["status"] == "approved", created
    return str(created["grant"]["id"])


def _warnings(store: Store) -> list[Notification]:
    return [n for n in outbox(store) if n.event_type == "grant.expiring"]


def test_grantees_are_warned_once_before_expiry(
    api: Control, ctx: Context, store: Store, clock: FrozenClock
) -> None:
    router = store.router
    assert isinstance(router, NotifyRouter)
    long_one = _grant(api, "10m")
    short_one = _grant(api, "4m")  # shorter than the warning period: never warned
    revoked = _grant(api, "12m")
    api.ok("POST", f"/v1/grants/{revoked}/revoke", "rita", json={"reason": "done"})

    assert router.warn_expiring(store, clock) == 0
    clock.advance(timedelta(minutes=5))  # long_one ends in exactly 5 minutes
    assert router.warn_expiring(store, clock) == 1
    first = _warnings(store)
    assert {(n.channel.value, n.target) for n in first} == {
        ("webhook", "ops"),
        ("webhook", "audit"),
        ("slack", "U_RITA"),
    }
    assert {
        n.payload.get("grant", {}).get("id") for n in first if n.channel.value == "webhook"
    } == {long_one}
    assert all(n.dedupe_key and long_one in n.dedupe_key for n in first)
    assert "expires at 2026-01-05 10:10 UTC" in next(
        n.payload["text"] for n in first if n.channel.value == "slack"
    )

    for _ in range(3):  # the job runs again and again: still one warning per destination
        clock.advance(timedelta(seconds=30))
        router.warn_expiring(store, clock)
    assert sorted(n.id for n in _warnings(store)) == sorted(n.id for n in first)
    assert short_one not in repr([n.payload for n in _warnings(store)])
