"""End to end: a grant's quota holds for the gateway as a whole, over its worker processes.

``jitgate up --demo --workers 2`` under a policy whose grants carry ``max_calls``. Calls
on many connections, spread by the kernel over both workers, race for the quota: exactly
``max_calls`` are admitted, every other one is 429 ``quota-exhausted``, and the audit log
holds exactly ``max_calls`` ``access.allowed`` events of the grant. A worker killed and
replaced does not reset the count. Which worker holds a connection is read from ``/proc``
(Linux), as in ``test_workers.py``.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.conftest import Server
from tests.e2e.test_workers import PATH, Instance, holder

pytestmark = pytest.mark.e2e

QUOTA = 10
CONNECTIONS = 16
CALLS = 4  # per connection: 64 calls for a quota of 10
POLICY = f"""\
version: 1
rules:
  - name: metered-reads
    requesters: {{groups: [engineering]}}
    apis: [demo]
    scopes: ["GET /v1/**"]
    max_duration: 15m
    approval: auto
    max_calls: {QUOTA}
"""


@dataclass
class QuotaServer(Server):
    """``jitgate up --demo`` with a ``policy_file``, which it uses instead of the demo's."""

    policy_file: Path = field(default_factory=Path)

    def environment(self) -> dict[str, str]:
        return {**super().environment(), "JITGATE_POLICY_FILE": str(self.policy_file)}


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    root = tmp_path_factory.mktemp("quota")
    policy_file = root / "policy.yaml"
    policy_file.write_text(POLICY)
    server = QuotaServer(root / "state", None, args=("--workers", "2"), policy_file=policy_file)
    server.start()
    try:
        yield Instance(server)
    finally:
        server.stop()


def call(conn: http.client.HTTPConnection, token: str) -> tuple[int, str | None]:
    """The status of one call, and its problem code when refused."""
    conn.request("GET", PATH, headers={"Authorization": f"Bearer {token}"})
    answer = conn.getresponse()
    body = answer.read()
    if answer.status == 200:
        return 200, None
    return answer.status, json.loads(body)["type"].rpartition(":")[2]


def spread_connections(instance: Instance) -> tuple[list[http.client.HTTPConnection], list[int]]:
    """Open connections, each accepted by a worker (a health check uses no quota), and
    the worker holding each; every worker holds some."""
    conns = [
        http.client.HTTPConnection("127.0.0.1", instance.server.gateway_port, timeout=10)
        for _ in range(CONNECTIONS)
    ]
    for conn in conns:
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() is not None
    workers = instance.workers()
    assert len(workers) == 2
    port = instance.server.gateway_port
    held = [holder(conn.sock.getsockname()[1], port, workers) for conn in conns]
    assert set(held) == workers, "the kernel spread the connections over both workers"
    return conns, [pid for pid in held if pid is not None]


def audited(instance: Instance, gid: str, kind: str) -> int:
    reply = instance.control("admin", "GET", f"/v1/audit?type={kind}&grant={gid}&limit=1000", None)
    assert reply.status_code == 200, reply.text
    return len(reply.json()["items"])


def test_calls_racing_over_both_workers_admit_exactly_max_calls(instance: Instance) -> None:
    gid, token = instance.grant()
    conns, held = spread_connections(instance)
    outcomes: list[list[tuple[int, str | None]]] = [[] for _ in conns]
    start = threading.Barrier(len(conns))

    def fire(conn: http.client.HTTPConnection, out: list[tuple[int, str | None]]) -> None:
        start.wait()
        out.extend(call(conn, token) for _ in range(CALLS))

    threads = [
        threading.Thread(target=fire, args=pair) for pair in zip(conns, outcomes, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for conn in conns:
        conn.close()
    answers = [answer for out in outcomes for answer in out]
    assert len(answers) == CONNECTIONS * CALLS
    admitted = [
        pid for pid, out in zip(held, outcomes, strict=True) for status, _ in out if status == 200
    ]
    assert len(admitted) == QUOTA, sorted(admitted)
    refused = {answer for answer in answers if answer[0] != 200}
    assert refused == {(429, "quota-exhausted")}

    # The audit trail agrees, once both workers' batches are written.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        allowed, denied = (audited(instance, gid, k) for k in ("access.allowed", "access.denied"))
        if allowed + denied >= len(answers):
            break
        time.sleep(0.1)
    assert (allowed, denied) == (QUOTA, len(answers) - QUOTA)


def test_a_replaced_worker_does_not_reset_the_count(instance: Instance) -> None:
    _, token = instance.grant()
    conns, _ = spread_connections(instance)
    answers = [call(conns[i % len(conns)], token) for i in range(QUOTA + 1)]
    assert [status for status, _ in answers] == [200] * QUOTA + [429]
    for conn in conns:
        conn.close()

    victim = min(instance.workers())
    os.kill(victim, signal.SIGKILL)
    serving = instance.serving()
    assert len(serving) == 2, serving
    assert victim not in serving

    conns, _ = spread_connections(instance)  # the replacement holds some of them
    try:
        assert {call(conn, token) for conn in conns} == {(429, "quota-exhausted")}
    finally:
        for conn in conns:
            conn.close()
