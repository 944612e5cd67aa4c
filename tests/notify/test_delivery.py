"""Delivery to real receivers on loopback: signatures, retries, dead letters, restarts."""

from __future__ import annotations

import json
import random
import socket
from datetime import timedelta

import pytest

from jitgate.audit.events import EventType, NewEvent
from jitgate.notify.delivery import Deliverer
from jitgate.notify.signing import SIGNATURE_HEADER, BadSignature, verify_webhook
from jitgate.storage.outbox_repo import Notification
from jitgate.storage.store import Store
from tests.control.conftest import assert_problem
from tests.notify.conftest import (
    AUDIT_SECRET,
    BOT_TOKEN,
    MAX_ATTEMPTS,
    OPS_SECRET,
    SIGNING_SECRET,
    Harness,
    notify_settings,
)

pytestmark = pytest.mark.anyio


def only(rows: list[Notification]) -> Notification:
    assert len(rows) == 1, rows
    return rows[0]


async def test_a_webhook_arrives_signed_and_is_delivered_once(harness: Harness) -> None:
    h = harness
    created = h.pending_write("rita")
    row = only(h.rows(target="ops"))

    assert await h.deliver() == 2  # the webhook and the Slack message
    hit = only(h.ops.hits)
    assert hit.path == "/hooks/jitgate"
    assert hit.headers["Content-Type"] == "application/json"
    assert hit.headers["X-Jitgate-Event"] == "request.decided"
    assert hit.headers["X-Jitgate-Delivery"] == row.id
    assert hit.headers["X-Jitgate-Priority"] == "normal"
    now = h.clock.timestamp()
    assert hit.headers[SIGNATURE_HEADER].startswith(f"t={int(now)},v1=")
    verify_webhook(OPS_SECRET, hit.headers[SIGNATURE_HEADER], hit.body, now)
    with pytest.raises(BadSignature):
        verify_webhook(AUDIT_SECRET, hit.headers[SIGNATURE_HEADER], hit.body, now)
    with pytest.raises(BadSignature):  # the receiver's replay window
        verify_webhook(OPS_SECRET, hit.headers[SIGNATURE_HEADER], hit.body, now + 301)
    body = hit.json()
    assert body == row.payload
    assert body["request"]["id"] == created["id"]
    assert h.audit.hits == []  # subscribed to grant.* only

    delivered = only(h.rows(target="ops"))
    assert delivered.status.value == "delivered"
    assert delivered.attempts == 1
    assert delivered.delivered_at == h.clock.now()
    assert await h.deliver() == 0
    h.clock.advance(timedelta(hours=1))
    assert await h.deliver() == 0
    assert len(h.ops.hits) == 1


async def test_slack_gets_block_kit_with_buttons_from_the_bot(harness: Harness) -> None:
    h = harness
    created = h.pending_write("rita")
    await h.deliver()
    hit = only(h.slack.hits)
    assert hit.path == "/api/chat.postMessage"
    assert hit.headers["Authorization"] == f"Bearer {BOT_TOKEN}"
    message = hit.json()
    assert message["channel"] == "#access"
    assert "rita asks for POST /v1/orders on demo for 30m" in message["text"]
    [actions] = [b for b in message["blocks"] if b["type"] == "actions"]
    values = {json.loads(e["value"])["request"] for e in actions["elements"]}
    assert values == {created["id"]}
    assert only(h.rows(channel="slack")).status.value == "delivered"


async def test_a_failing_receiver_is_retried_after_a_backoff(harness: Harness) -> None:
    h = harness
    h.ops.statuses = [503]
    h.pending_write("rita")
    start = h.clock.now()

    await h.deliver()
    row = only(h.rows(target="ops"))
    assert (row.status.value, row.attempts) == ("pending", 1)
    assert row.last_error == "HTTP 503: receiver is down"
    # 10 s back-off with jitter in its upper half
    assert start + timedelta(seconds=5) <= row.next_attempt_at <= start + timedelta(seconds=10)

    assert await h.deliver() == 0  # not before its time
    assert len(h.ops.hits) == 1
    h.clock.advance(timedelta(seconds=10))
    assert await h.deliver() == 1
    first, second = h.ops.hits
    assert first.headers["X-Jitgate-Delivery"] == second.headers["X-Jitgate-Delivery"]
    assert first.body == second.body
    verify_webhook(OPS_SECRET, second.headers[SIGNATURE_HEADER], second.body, h.clock.timestamp())
    done = only(h.rows(target="ops"))
    assert (done.status.value, done.attempts, done.last_error) == ("delivered", 2, None)


async def test_slack_refusing_a_message_is_a_failed_attempt(harness: Harness) -> None:
    h = harness
    h.slack.replies = [{"ok": False, "error": "channel_not_found"}]
    h.pending_write("rita")
    await h.deliver()
    row = only(h.rows(channel="slack"))
    assert (row.status.value, row.last_error) == (
        "pending",
        "Slack refused the message: channel_not_found",
    )
    h.clock.advance(timedelta(seconds=10))
    await h.deliver()
    assert only(h.rows(channel="slack")).status.value == "delivered"


async def test_an_always_failing_receiver_ends_dead_visible_and_retriable(
    harness: Harness,
) -> None:
    h = harness
    h.ops.default = 500
    h.pending_write("rita")
    for _ in range(MAX_ATTEMPTS + 2):
        await h.deliver()
        h.clock.advance(h.settings.max_backoff)
    assert len(h.ops.hits) == MAX_ATTEMPTS  # not one attempt more
    dead = only(h.rows(target="ops"))
    assert (dead.status.value, dead.attempts) == ("dead", MAX_ATTEMPTS)

    listed = h.api.ok("GET", "/v1/notifications?status=dead", "admin")["items"]
    assert [(n["id"], n["target"], n["attempts"]) for n in listed] == [
        (dead.id, "ops", MAX_ATTEMPTS)
    ]
    assert listed[0]["last_error"] == "HTTP 500: receiver is down"
    assert listed[0]["status"] == "dead"
    everything = h.api.ok("GET", "/v1/notifications", "admin")["items"]
    assert {n["status"] for n in everything} == {"dead", "delivered"}
    for answer in h.api.responses:
        for secret in (OPS_SECRET, BOT_TOKEN, SIGNING_SECRET, f"127.0.0.1:{h.ops.port}"):
            assert secret not in answer.text
    assert_problem(h.api.get("/v1/notifications", "bob"), 403, "not-admin")
    assert_problem(h.api.get("/v1/notifications?status=lost", "admin"), 422)
    assert_problem(h.api.post(f"/v1/notifications/{dead.id}/retry", "bob"), 403, "not-admin")

    retried = h.api.ok("POST", f"/v1/notifications/{dead.id}/retry", "admin")
    assert (retried["status"], retried["attempts"]) == ("pending", 0)
    with h.store.read() as tx:
        [event] = [e for e in tx.audit.stream() if e.type == EventType.NOTIFICATION_RETRIED]
    assert event.actor == "admin"
    assert event.data["notification"] == dead.id
    h.ops.default = 200
    assert await h.deliver() == 1
    assert only(h.rows(target="ops")).status.value == "delivered"

    again = h.api.post(f"/v1/notifications/{dead.id}/retry", "admin")
    assert_problem(again, 409, "notification-not-dead")
    missing = h.api.post("/v1/notifications/ntf_nope/retry", "admin")
    assert_problem(missing, 404, "notification-not-found")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_or_unconfigured_receivers_are_failed_attempts(
    harness: Harness,
) -> None:
    h = harness
    nowhere = f"http://127.0.0.1:{_closed_port()}"
    settings = notify_settings(nowhere, h.audit.url, nowhere)
    without_audit = settings.model_copy(update={"webhooks": settings.webhooks[:1]})
    deliverer = Deliverer(h.store, without_audit, h.clock, rng=random.Random(1))
    with h.store.transaction() as tx:
        tx.audit.append([NewEvent(EventType.GRANT_REVOKED, h.clock.now(), principal="rita")])
    await h.deliver(deliverer)
    errors = {n.target: n.last_error for n in h.rows()}
    assert errors == {
        "ops": "cannot deliver: ClientConnectorError",
        "audit": "no webhook named 'audit' is configured",
        "U_RITA": "cannot deliver: ClientConnectorError",
    }
    assert h.audit.hits == []


async def test_nothing_is_lost_when_the_worker_dies_mid_delivery(harness: Harness) -> None:
    h = harness
    h.pending_write("rita")
    now = h.clock.now()
    with h.store.transaction() as tx:  # a worker claims both rows, then the process dies
        claimed = tx.outbox.claim_due(now, now + timedelta(seconds=40), 50)
    assert len(claimed) == 2

    url = h.store.engine.url.render_as_string(hide_password=False)
    restarted = Store.open(url)  # a new process on the same database
    try:
        worker = Deliverer(restarted, h.settings, h.clock, rng=random.Random(2))
        assert await h.deliver(worker) == 0  # still leased to the dead worker
        h.clock.advance(timedelta(seconds=40))
        assert await h.deliver(worker) == 2
    finally:
        restarted.close()
    assert len(h.ops.hits) == len(h.slack.hits) == 1
    assert {(n.status.value, n.attempts) for n in h.rows()} == {("delivered", 2)}


async def test_high_priority_goes_first(harness: Harness) -> None:
    h = harness
    one_at_a_time = Deliverer(h.store, h.settings, h.clock, batch=1)
    with h.store.transaction() as tx:
        at = h.clock.now()
        tx.audit.append([NewEvent(EventType.REQUEST_EXPIRED, at, principal="alice")])
        tx.audit.append(
            [NewEvent(EventType.GRANT_ISSUED, at, principal="alice", data={"break_glass": True})]
        )
    assert await h.deliver(one_at_a_time) == 1
    delivered = [n for n in h.rows() if n.status.value == "delivered"]
    assert [(n.event_type, n.priority.value) for n in delivered] == [("grant.issued", "high")]
    assert len(h.ops.hits + h.audit.hits + h.slack.hits) == 1


@pytest.mark.parametrize("attempts", [1, 2, 3, 5, 8, 40])
async def test_backoff_doubles_with_jitter_and_is_capped(harness: Harness, attempts: int) -> None:
    base, cap = harness.settings.backoff, harness.settings.max_backoff
    full = min(cap, base * 2 ** (attempts - 1))
    for _ in range(20):
        assert full / 2 <= harness.deliverer.backoff(attempts) <= full
