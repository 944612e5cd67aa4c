"""The policy changes under a running ``jitgate up``: by editing the file, by SIGHUP, and
a broken edit leaves the policy in force deciding. Real processes and sockets.

The steps share one server per backend and run in file order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Server, postgres_database

pytestmark = pytest.mark.e2e

RULE = """\
  - name: {name}
    requesters: {{groups: [engineering]}}
    apis: [demo]
    scopes: ["{scope}"]
    max_duration: 15m
    approval: auto
"""
READS = "version: 1\nrules:\n" + RULE.format(name="reads", scope="GET /**")
PUTS = RULE.format(name="puts-at-once", scope="PUT /**")
POSTS = RULE.format(name="posts-at-once", scope="POST /**")
BROKEN = READS + PUTS + POSTS.replace("POST /**", "PSOT /**")
BROKEN_LINE = 1 + next(n for n, line in enumerate(BROKEN.splitlines()) if "PSOT" in line)
WATCH_DEADLINE = 3.5  # seconds: a poll notices the edit, the next one (1 s later) loads it


@dataclass
class PolicyServer(Server):
    """``jitgate up --demo`` with a ``policy_file``, which it uses instead of the demo's."""

    policy_file: Path = field(default_factory=Path)

    def environment(self) -> dict[str, str]:
        return {**super().environment(), "JITGATE_POLICY_FILE": str(self.policy_file)}


@dataclass
class Instance:
    server: PolicyServer
    http: httpx.Client

    @property
    def policy_file(self) -> Path:
        return self.server.policy_file

    def call(self, who: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        tokens = json.loads((self.server.state_dir / "demo-tokens.json").read_text())
        headers = {"Authorization": f"Bearer {tokens[who]}"}
        return self.http.request(method, self.server.control_url + path, headers=headers, **kwargs)

    def in_force(self) -> str:
        digest: str = self.http.get(f"{self.server.control_url}/readyz").json()["policy"]
        return digest

    def decide(self, method: str) -> tuple[str, str]:
        """alice asks for ``method /v1/orders``: the outcome and the policy version."""
        body = {"api": "demo", "scopes": [f"{method} /v1/orders"], "duration": "5m",
                "reason": "e2e policy reload"}  # fmt: skip
        created = self.call("alice", "POST", "/v1/requests", json=body).json()
        return created["status"], created["decision"]["policy_version"]

    def policy_events(self) -> list[dict[str, Any]]:
        response = self.call("admin", "GET", "/v1/audit", params={"type": "policy.*"})
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def wait_for(condition: Callable[[], bool], seconds: float) -> float:
    """Seconds until ``condition()`` held; fails after ``seconds``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > seconds:
            pytest.fail(f"not within {seconds} s")
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    root = tmp_path_factory.mktemp(f"reload-{request.param}")
    policy_file = root / "policy.yaml"
    policy_file.write_text(READS)
    with contextlib.ExitStack() as stack:
        database_url = None
        if request.param == "postgres":
            postgres_url = request.getfixturevalue("postgres_url")
            database_url = stack.enter_context(postgres_database(postgres_url))
        server = PolicyServer(root / "state", database_url, policy_file=policy_file)
        stack.callback(server.stop)
        server.start()
        http = stack.enter_context(httpx.Client(timeout=30))
        yield Instance(server, http)


def test_the_configured_file_decides_from_the_start(instance: Instance) -> None:
    assert instance.in_force() == digest(READS)
    assert instance.decide("GET") == ("approved", digest(READS))
    assert instance.decide("PUT") == ("denied", digest(READS))
    [loaded] = [e for e in instance.policy_events() if e["type"] == "policy.loaded"]
    assert (loaded["data"]["digest"], loaded["data"]["trigger"]) == (digest(READS), "startup")


def test_an_edited_file_decides_within_seconds(instance: Instance) -> None:
    text = READS + PUTS
    instance.policy_file.write_text(text)
    wait_for(lambda: instance.in_force() == digest(text), WATCH_DEADLINE)
    assert instance.decide("PUT") == ("approved", digest(text))
    loaded = instance.policy_events()[-1]
    assert loaded["type"] == "policy.loaded"
    assert loaded["data"]["previous_digest"] == digest(READS)
    assert loaded["data"]["trigger"] == "file-change"


def test_sighup_reloads_at_once(instance: Instance) -> None:
    text = READS + PUTS + POSTS
    instance.policy_file.write_text(text)
    assert instance.server.process is not None
    instance.server.process.send_signal(signal.SIGHUP)
    # Well before the watcher, which waits for the file to settle for one poll (1 s).
    wait_for(lambda: instance.in_force() == digest(text), 0.9)
    assert instance.decide("POST") == ("approved", digest(text))
    loaded = instance.policy_events()[-1]
    assert (loaded["type"], loaded["data"]["trigger"]) == ("policy.loaded", "signal")
    assert loaded["data"]["previous_digest"] == digest(READS + PUTS)
    assert instance.server.running


def test_a_broken_edit_leaves_the_old_policy_deciding(instance: Instance) -> None:
    in_force = instance.in_force()
    instance.policy_file.write_text(BROKEN)

    def refused() -> bool:
        return instance.policy_events()[-1]["type"] == "policy.rejected"

    wait_for(refused, WATCH_DEADLINE)
    rejected = instance.policy_events()[-1]
    assert rejected["data"]["trigger"] == "file-change"
    assert f"{instance.policy_file}:{BROKEN_LINE}:" in rejected["data"]["error"]
    assert rejected["data"]["digest_in_force"] == in_force
    assert instance.server.process is not None
    instance.server.process.send_signal(signal.SIGHUP)
    wait_for(lambda: instance.policy_events()[-1]["data"]["trigger"] == "signal", 2.0)
    time.sleep(1.5)  # more polls of the same broken file: no more events
    events = instance.policy_events()
    assert [e["data"]["trigger"] for e in events if e["type"] == "policy.rejected"] == [
        "file-change",
        "signal",
    ]
    assert instance.in_force() == in_force
    assert instance.decide("POST") == ("approved", in_force)
    answer = instance.call("admin", "POST", "/v1/policy/reload")
    assert answer.status_code == 422
    assert f"{instance.policy_file}:{BROKEN_LINE}:" in answer.json()["detail"]
    assert instance.in_force() == in_force
    assert "policy rejected" in instance.server.text()
    assert instance.server.running
