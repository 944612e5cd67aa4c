"""End to end: ``jitgate up --demo --workers 2``, the gateway in two worker processes.

A revocation is in force in every worker when the revoke call returns (calls on many
connections, spread by the kernel over both workers, are watched across the revoke);
API changes reach every worker; a dead worker is replaced; workers die with the main
process; a worker killed again and again as soon as it serves is replaced later each
time, and the main process stops at once while it waits. Which worker holds a connection
is read from ``/proc`` (Linux), so the product needs no test hook.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Server
from tests.processes import alive, spawned_children

CONNECTIONS = 16
PATH = "/demo/v1/orders/42"


@dataclass
class Instance:
    server: Server
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    @property
    def tokens(self) -> dict[str, str]:
        tokens: dict[str, str] = json.loads(
            (self.server.state_dir / "demo-tokens.json").read_text()
        )
        return tokens

    def control(self, who: str, method: str, path: str, body: object = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        return self.http.request(method, self.server.control_url + path, json=body, headers=headers)

    def grant(self) -> tuple[str, str]:
        body = {"api": "demo", "scopes": ["GET /v1/**"], "duration": "10m", "reason": "workers"}
        created = self.control("alice", "POST", "/v1/requests", body).json()
        assert created["status"] == "approved", created
        gid = created["grant_id"]
        return gid, self.control("alice", "POST", f"/v1/grants/{gid}/token").json()["token"]

    def workers(self) -> set[int]:
        """The pids of the server's gateway workers (its spawned children)."""
        assert self.server.process is not None
        return spawned_children(self.server.process.pid)

    def serving(self, count: int = 2, timeout: float = 30.0) -> set[int]:
        """The workers that said they are serving, once ``count`` of them have (or at
        ``timeout``: then fewer)."""
        deadline = time.monotonic() + timeout
        serving: set[int] = set()
        while time.monotonic() < deadline and len(serving) < count:
            text = self.server.text()
            serving = {p for p in self.workers() if f"is serving (pid {p})" in text}
            time.sleep(0.05)
        return serving


def holder(client_port: int, server_port: int, pids: set[int]) -> int | None:
    """The pid among ``pids`` holding the server end of a loopback TCP connection."""
    remote = f"0100007F:{client_port:04X}"
    local = f"0100007F:{server_port:04X}"
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[1] == local and cols[2] == remote:
            inode = cols[9]
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == f"socket:[{inode}]":
                        return pid
    return None


def get(conn: http.client.HTTPConnection, token: str) -> int:
    conn.request("GET", PATH, headers={"Authorization": f"Bearer {token}"})
    answer = conn.getresponse()
    answer.read()
    return answer.status


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    server = Server(tmp_path_factory.mktemp("workers") / "state", None, args=("--workers", "2"))
    server.start()
    try:
        yield Instance(server)
    finally:
        server.stop()


@pytest.fixture
def connections(instance: Instance) -> Iterator[list[http.client.HTTPConnection]]:
    conns = [
        http.client.HTTPConnection("127.0.0.1", instance.server.gateway_port, timeout=10)
        for _ in range(CONNECTIONS)
    ]
    yield conns
    for conn in conns:
        conn.close()


def test_a_revocation_is_in_force_in_every_worker_when_the_revoke_call_returns(
    instance: Instance, connections: list[http.client.HTTPConnection]
) -> None:
    gid, token = instance.grant()
    assert all(get(conn, token) == 200 for conn in connections)
    workers = instance.workers()
    assert len(workers) == 2
    held = [
        holder(c.sock.getsockname()[1], instance.server.gateway_port, workers) for c in connections
    ]
    assert set(held) == workers, "the kernel spread the connections over both workers"

    # Every connection calls in a loop across the revoke; each call notes when it was sent.
    calls: list[list[tuple[float, int]]] = [[] for _ in connections]
    stop = threading.Event()

    def hammer(conn: http.client.HTTPConnection, log: list[tuple[float, int]]) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            log.append((sent, get(conn, token)))

    pairs = zip(connections, calls, strict=True)
    threads = [threading.Thread(target=hammer, args=pair) for pair in pairs]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        revoked = instance.control("bob", "POST", f"/v1/grants/{gid}/revoke", {"reason": "e2e"})
        returned = time.monotonic()
        assert revoked.status_code == 200, revoked.text
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    for log, pid in zip(calls, held, strict=True):
        before = [status for sent, status in log if sent < returned]
        after = [status for sent, status in log if sent > returned]
        assert 200 in before, (pid, log[:3])
        assert after, f"no call was sent after the revoke on a connection of worker {pid}"
        assert set(after) == {403}, (pid, after)
    for conn in connections:  # and the very next call, one connection after another
        assert get(conn, token) == 403


def test_api_changes_reach_every_worker(
    instance: Instance, connections: list[http.client.HTTPConnection]
) -> None:
    _, token = instance.grant()
    assert all(get(conn, token) == 200 for conn in connections)
    rotated = instance.control("admin", "POST", "/v1/apis/demo/secret", {"secret": "sk_wrong_1"})
    assert rotated.status_code == 204, rotated.text
    changed = time.monotonic()
    waiting = set(range(CONNECTIONS))
    while waiting and time.monotonic() - changed < 1.0:  # SPEC: replicas within 1 s
        # The demo upstream refuses any key but its own: 401 once a worker injects the new one.
        waiting = {i for i in waiting if get(connections[i], token) != 401}
    assert not waiting, f"connections {sorted(waiting)} still use the old secret after 1 s"


def test_a_worker_that_dies_is_replaced(instance: Instance) -> None:
    victim = min(instance.workers())
    os.kill(victim, signal.SIGKILL)
    serving = instance.serving()
    assert len(serving) == 2, serving
    assert victim not in serving
    assert instance.server.running
    assert f"(pid {victim}) exited with code -9; starting another" in instance.server.text()
    assert httpx.get(f"{instance.server.gateway_url}/healthz", timeout=10).status_code == 200


def test_workers_killed_one_after_another_are_each_replaced(instance: Instance) -> None:
    """The exit can be seen (sentinel) a moment before it can be reaped: every death,
    however soon after the previous replacement, gets its replacement."""
    killed: set[int] = set()
    for _ in range(4):
        victim = min(instance.workers() - killed)
        os.kill(victim, signal.SIGKILL)
        killed.add(victim)
        serving = instance.serving()
        assert len(serving) == 2, instance.server.text()[-2000:]
        assert not serving & killed
    assert "Traceback" not in instance.server.text()
    assert httpx.get(f"{instance.server.gateway_url}/healthz", timeout=10).status_code == 200


def test_workers_die_with_the_main_process(instance: Instance) -> None:
    workers = instance.workers()
    assert instance.server.process is not None
    instance.server.process.kill()  # SIGKILL: no chance to stop them itself
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(alive(p) for p in workers):
        time.sleep(0.1)
    left = {p for p in workers if alive(p)}
    assert len(workers) == 2
    assert not left, f"workers {left} outlived the main process"


def serving(server: Server, slot: int) -> list[int]:
    """The pids that said they serve in worker slot ``slot``, oldest first."""
    return [
        int(p)
        for p in re.findall(rf"gateway worker {slot} is serving \(pid (\d+)\)", server.text())
    ]


def test_a_worker_in_a_crash_loop_is_replaced_later_each_time_and_stop_does_not_wait(
    tmp_path: Path,
) -> None:
    """Its own instance: the module's has had workers killed (the back-off is per slot)."""
    server = Server(tmp_path / "state", None, args=("--workers", "2"))
    server.start()
    try:
        [other] = serving(server, 1)
        for n, delay in enumerate([1, 2, 4]):  # every worker of slot 0 served under 30 s
            deadline = time.monotonic() + 30
            while len(serving(server, 0)) <= n and time.monotonic() < deadline:
                time.sleep(0.01)
            victim = serving(server, 0)[n]
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            said = f"(pid {victim}) exited with code -9; starting another in {delay} s"
            while said not in server.text() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert said in server.text(), server.text()[-2000:]
            # The other worker serves all the while.
            assert httpx.get(f"{server.gateway_url}/healthz", timeout=10).status_code == 200
            if n < 2:
                while len(serving(server, 0)) <= n + 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert time.monotonic() - killed >= delay
        began = time.monotonic()  # slot 0 waits 4 s for its next worker: stop now
        assert server.stop() == 0
        assert time.monotonic() - began < 3
        assert len(serving(server, 0)) == 3, "no worker was started after the stop"
        assert not alive(other)
        assert "Traceback" not in server.text()
    finally:
        server.stop()
