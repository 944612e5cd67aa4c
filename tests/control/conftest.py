"""Fixtures for the control plane, in process: the FastAPI app on the shared ``ctx``.

``control`` is a client on ``create_app(ctx)`` with the demo fixture set up (alice,
bob, carol, admin and the API ``demo``). Every response it receives is kept, so that
tests can check that no answer ever carried a secret.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from jitgate.control.app import create_app
from jitgate.demo.fixture import set_up_demo
from jitgate.problems import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_PREFIX
from jitgate.services.context import Context
from jitgate.storage.store import Store
from jitgate.storage.tables import metadata

UPSTREAM = "http://127.0.0.1:9"  # never contacted: the control plane does not proxy


@dataclass
class Control:
    """A TestClient that acts as a named demo principal and remembers every answer."""

    client: TestClient
    tokens: dict[str, str]
    demo_secret: str
    responses: list[httpx.Response] = field(default_factory=list)

    def call(
        self,
        method: str,
        path: str,
        who: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        sent = dict(headers or {})
        if who is not None:
            sent["Authorization"] = f"Bearer {self.tokens[who]}"
        response = self.client.request(method, path, headers=sent, **kwargs)
        self.responses.append(response)
        return response

    def get(self, path: str, who: str | None = None, **kwargs: Any) -> httpx.Response:
        return self.call("GET", path, who, **kwargs)

    def post(self, path: str, who: str | None = None, **kwargs: Any) -> httpx.Response:
        return self.call("POST", path, who, **kwargs)

    def ok(self, method: str, path: str, who: str, **kwargs: Any) -> Any:
        """The JSON of a call that must succeed."""
        response = self.call(method, path, who, **kwargs)
        assert response.status_code < 300, (response.status_code, response.text)
        return response.json() if response.content else None

    def request(self, who: str = "alice", scope: str = "GET /v1/**", **extra: Any) -> Any:
        body = {"api": "demo", "scopes": [scope], "duration": "10m", "reason": "test", **extra}
        return self.ok("POST", "/v1/requests", who, json=body)

    def pending_write(self) -> Any:
        created = self.request(scope="POST /v1/orders")
        assert created["status"] == "pending"
        return created

    def grant(self, who: str = "alice") -> Any:
        created = self.request(who)
        assert created["status"] == "approved", created
        return created["grant"]


@pytest.fixture
def control(ctx: Context, tmp_path: Path) -> Iterator[Control]:
    tokens, secret = set_up_demo(ctx, tmp_path, UPSTREAM)
    with TestClient(create_app(ctx), raise_server_exceptions=False) as client:
        yield Control(client, tokens, secret.reveal())


def assert_problem(response: httpx.Response, status: int, code: str | None = None) -> Any:
    """``response`` is an RFC 9457 problem with this status (and code); return its body."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE), response.headers
    body = response.json()
    assert body["type"].startswith(PROBLEM_TYPE_PREFIX), body
    assert body["status"] == status, body
    assert isinstance(body["detail"], str), body
    assert body["detail"], body
    if code is not None:
        assert body["type"] == PROBLEM_TYPE_PREFIX + code, body
    return body


def snapshot(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table: two equal snapshots mean nothing was written."""
    with store.read() as tx:
        return {
            table.name: sorted(
                (tuple(row) for row in tx.connection.execute(select(table))), key=repr
            )
            for table in metadata.sorted_tables
        }
