"""End to end: a ``jitgate serve gateway`` process learns of a revocation by NOTIFY.

``jitgate up --demo`` on a fresh PostgreSQL database is the control plane (its own
gateway is not used here); a separate ``jitgate serve gateway --workers 2`` shares the
database and the master key. A grant revoked through the control API is refused by
that gateway within :data:`PROMPT` — well inside the periodic resync's 250 ms, so it is
the NOTIFY that carried it — on new connections, which the kernel spreads over both
workers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import JITGATE, Server, postgres_database

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

PATH = "/demo/v1/orders/42"
PROMPT = 0.1  # seconds from the revoke call's answer to the gateway's refusal
TRIALS = 3


@dataclass
class GatewayServer(Server):
    """``jitgate serve gateway --workers 2`` with the control plane's master key."""

    master_key_file: Path = field(default_factory=Path)

    def environment(self) -> dict[str, str]:
        return {**super().environment(), "JITGATE_MASTER_KEY_FILE": str(self.master_key_file)}

    def command(self) -> list[str]:
        return [*JITGATE, "serve", "gateway", "--workers", "2"]

    def served(self) -> tuple[str, ...]:
        return (self.gateway_url,)


@pytest.fixture
def servers(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, GatewayServer]]:
    root = tmp_path_factory.mktemp("notify")
    with postgres_database(postgres_url) as database:
        control = Server(root / "control", database)
        # Same issuer (the control plane's URL) for the tokens it accepts.
        gateway = GatewayServer(
            root / "gateway",
            database,
            control_port=control.control_port,
            master_key_file=root / "control" / "master.key",
        )
        try:
            control.start()
            gateway.start()
            yield control, gateway
        finally:
            gateway.stop()
            control.stop()


def test_a_separate_gateway_refuses_a_revoked_grant_at_once(
    servers: tuple[Server, GatewayServer],
) -> None:
    control, gateway = servers
    tokens = json.loads((control.state_dir / "demo-tokens.json").read_text())

    def call_control(who: str, method: str, path: str, body: object = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {tokens[who]}"}
        return httpx.request(method, control.control_url + path, json=body, headers=headers)

    def call_gateway(token: str) -> httpx.Response:  # a new connection each time
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.get(gateway.gateway_url + PATH, headers=headers, timeout=10)

    latencies = []
    for trial in range(TRIALS):
        body = {"api": "demo", "scopes": ["GET /v1/**"], "duration": "10m", "reason": "notify"}
        created = call_control("alice", "POST", "/v1/requests", body).json()
        assert created["status"] == "approved", created
        gid = created["grant_id"]
        token = call_control("alice", "POST", f"/v1/grants/{gid}/token").json()["token"]
        admitted = call_gateway(token)
        assert admitted.status_code == 200, admitted.text

        revoked = call_control("admin", "POST", f"/v1/grants/{gid}/revoke", {"reason": "e2e"})
        answered = time.monotonic()
        assert revoked.is_success, revoked.text
        late = 0  # calls still admitted after the revoke call answered
        while (reply := call_gateway(token)).status_code == 200:
            late += 1
            assert time.monotonic() - answered < 1.0, f"trial {trial}: still admitted after 1 s"
        refused = time.monotonic() - answered
        assert reply.status_code == 403, reply.text
        assert reply.json()["code"] == "grant-revoked"
        latencies.append((round(refused * 1000, 1), late))
    print(f"revoke answered -> refused by the other gateway (ms, calls admitted): {latencies}")
    assert max(ms for ms, _ in latencies) < PROMPT * 1000, latencies
    assert "Traceback" not in gateway.text()
