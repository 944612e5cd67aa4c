"""Notifications end to end on loopback: real HTTP receivers, a fake Slack API, the outbox.

``harness`` (async, on SQLite and PostgreSQL through ``store``) starts, on free
``127.0.0.1`` ports, two webhook receivers (``ops`` subscribed to everything, ``audit``
to ``grant.*`` only) and a fake Slack Web API; it installs the notify router on the
store (removed again at the end: the PostgreSQL store is shared by the session), builds
a :class:`Deliverer` with a seeded random source, and sets up the demo fixture (alice,
bob, carol, admin) plus ``dave`` (approvers, Slack ``U_DAVE``), ``erin`` (engineering,
Slack ``U_ERIN``) and ``rita`` (engineering, Slack ``U_RITA``), each with a token.
Deliveries are made by :meth:`Harness.deliver`: the production job, in a worker thread,
while the receivers answer on the test's event loop.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select

from jitgate.clock import FrozenClock
from jitgate.config import NotificationSettings, SlackSettings, WebhookSettings
from jitgate.control.app import create_app
from jitgate.demo.fixture import set_up_demo
from jitgate.notify.delivery import Deliverer
from jitgate.notify.router import NotifyRouter
from jitgate.secrets import Secret
from jitgate.services import directory
from jitgate.services.context import Context
from jitgate.storage.outbox_repo import Notification
from jitgate.storage.store import Store
from jitgate.storage.tables import notifications
from tests.control.conftest import Control

OPS_SECRET = "whsec_ops_0123456789abcdef"
AUDIT_SECRET = "whsec_audit_0123456789abcdef"
BOT_TOKEN = "xoxb-test-bot-token"
SIGNING_SECRET = "slack-signing-secret-for-tests"
CONTROL_URL = "http://control.test"
MAX_ATTEMPTS = 3

SLACK_PRINCIPALS = {
    "dave": (["approvers"], "U_DAVE"),
    "erin": (["engineering"], "U_ERIN"),
    "rita": (["engineering"], "U_RITA"),
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """An HTTP server that records what it receives and answers with ``statuses`` in
    turn (then ``default``); ``replies`` and ``default_reply`` likewise for JSON bodies
    (the fake Slack Web API answers ``{"ok": true}``)."""

    statuses: list[int] = field(default_factory=list)
    default: int = 200
    replies: list[dict[str, Any]] = field(default_factory=list)
    default_reply: dict[str, Any] | None = None
    hits: list[Hit] = field(default_factory=list)
    port: int = 0

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.hits.append(Hit(request.path, dict(request.headers), await request.read()))
        status = self.statuses.pop(0) if self.statuses else self.default
        reply = self.replies.pop(0) if self.replies else self.default_reply
        if reply is not None:
            return web.json_response(reply, status=status)
        return web.Response(status=status, text="ok" if status < 300 else "receiver is down")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def serve(receiver: Receiver) -> web.ServerRunner:
    runner = web.ServerRunner(web.Server(receiver.handle), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    receiver.port = runner.addresses[0][1]
    return runner


def notify_settings(ops: str, audit: str, slack: str | None, **extra: Any) -> NotificationSettings:
    return NotificationSettings(
        webhooks=[
            WebhookSettings(name="ops", url=f"{ops}/hooks/jitgate", secret=SecretStr(OPS_SECRET)),
            WebhookSettings(
                name="audit", url=audit, secret=SecretStr(AUDIT_SECRET), events=["grant.*"]
            ),
        ],
        slack=None
        if slack is None
        else SlackSettings(
            bot_token=SecretStr(BOT_TOKEN),
            signing_secret=SecretStr(SIGNING_SECRET),
            api_url=f"{slack}/api",
            default_channel="#access",
        ),
        max_attempts=MAX_ATTEMPTS,
        backoff=timedelta(seconds=10),
        max_backoff=timedelta(minutes=5),
        timeout=timedelta(seconds=5),
        **extra,
    )


@dataclass
class Harness:
    ctx: Context
    store: Store
    clock: FrozenClock
    settings: NotificationSettings
    router: NotifyRouter
    deliverer: Deliverer
    ops: Receiver
    audit: Receiver
    slack: Receiver
    api: Control

    async def deliver(self, deliverer: Deliverer | None = None) -> int:
        return await anyio.to_thread.run_sync((deliverer or self.deliverer).run_once)

    def rows(self, **where: str) -> list[Notification]:
        with self.store.read() as tx:
            found = tx.outbox.list_notifications(limit=1000)
        return sorted(
            (n for n in found if all(getattr(n, k) == v for k, v in where.items())),
            key=lambda n: (n.created_at, n.channel, n.target),
        )

    def raw_rows(self) -> list[dict[str, Any]]:
        with self.store.read() as tx:
            return [dict(r._mapping) for r in tx.connection.execute(select(notifications))]

    def pending_write(self, who: str = "alice") -> Any:
        """A request that needs one approver (the demo's write rule)."""
        body = {"api": "demo", "scopes": ["POST /v1/orders"], "duration": "30m", "reason": "fix"}
        created = self.api.ok("POST", "/v1/requests", who, json=body)
        assert created["status"] == "pending", created
        return created


@pytest.fixture
def installed(store: Store) -> Iterator[None]:
    """Whatever router a test installs on the store is removed afterwards."""
    yield
    store.router = None


def add_slack_principals(ctx: Context, tokens: dict[str, str]) -> None:
    for pid, (groups, slack_user) in SLACK_PRINCIPALS.items():
        directory.create_principal(
            ctx, None, pid, groups=groups, attributes={"slack_user_id": slack_user}
        )
        tokens[pid] = directory.issue_principal_token(ctx, None, pid, label="test")


@pytest.fixture
async def harness(
    ctx: Context, store: Store, clock: FrozenClock, tmp_path: Path, installed: None
) -> AsyncIterator[Harness]:
    ops, audit, slack = Receiver(), Receiver(), Receiver(default_reply={"ok": True})
    runners = [await serve(r) for r in (ops, audit, slack)]
    try:
        settings = notify_settings(ops.url, audit.url, slack.url)
        router = NotifyRouter(settings, control_url=CONTROL_URL)
        store.router = router
        ctx.slack_signing_secret = Secret(SIGNING_SECRET)
        tokens, secret = set_up_demo(ctx, tmp_path, "http://127.0.0.1:9")
        add_slack_principals(ctx, tokens)
        deliverer = Deliverer(store, settings, clock, rng=random.Random(7))
        with TestClient(create_app(ctx), raise_server_exceptions=False) as client:
            yield Harness(
                ctx,
                store,
                clock,
                settings,
                router,
                deliverer,
                ops,
                audit,
                slack,
                Control(client, tokens, secret.reveal()),
            )
    finally:
        for runner in runners:
            await runner.cleanup()
