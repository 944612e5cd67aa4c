"""Reloading the policy in force: recorded before it decides, refused when bad, watched."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from jitgate.clock import FrozenClock
from jitgate.errors import Conflict, Forbidden
from jitgate.policy import load_policy
from jitgate.services import access
from jitgate.services.context import Context
from jitgate.services.policy import (
    PolicyRejected,
    PolicyWatcher,
    Trigger,
    record_policy,
    reload_policy,
)
from jitgate.storage.audit_repo import AuditFilter
from jitgate.storage.store import Store

from .conftest import Demo, last_seq

READS = """\
version: 1
rules:
  - name: reads
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["GET /**"]
    max_duration: 15m
    approval: auto
"""
WRITES = """\
  - name: writes-at-once
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["POST /**"]
    max_duration: 15m
    approval: auto
"""
BAD_SCOPE_LINE = 6  # the line of `scopes:` in READS
BAD = READS.replace('"GET /**"', '"GTE /**"')


def events(store: Store, kind: str) -> list[dict[str, Any]]:
    """The ``actor`` and ``data`` of every event of one type, oldest first."""
    with store.read() as tx:
        found = tx.audit.query(AuditFilter(type=kind), limit=1000)
    return [{"actor": e.actor, **e.data} for e in found]


class PolicyFile:
    """The policy file of the test's context; every write gets a new modification time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = 1_700_000_000_000_000_000

    def write(self, text: str) -> None:
        self.path.write_text(text)
        self._mtime += 1_000_000_000
        os.utime(self.path, ns=(self._mtime, self._mtime))


@pytest.fixture
def policy_file(ctx: Context, tmp_path: Path) -> PolicyFile:
    """``ctx`` configured with a ``policy_file`` holding READS, in force."""
    file = PolicyFile(tmp_path / "policy.yaml")
    file.write(READS)
    ctx.policy_file = file.path
    ctx.replace_policy(load_policy(file.path))
    return file


def write_request(ctx: Context, demo: Demo) -> dict[str, Any]:
    """alice asks to write: the outcome, and the policy version that decided it."""
    created = access.create_request(
        ctx, demo.alice, api="demo", scopes=["POST /v1/orders"], duration="10m", reason="test"
    )
    request = created.request
    return {"status": request.status.value, "version": request.decision.policy_version}


def test_start_up_records_the_policy_with_its_digest(ctx: Context) -> None:
    record_policy(ctx, ctx.policy)
    [loaded] = events(ctx.store, "policy.loaded")
    assert loaded == {
        "actor": "system",
        "source": ctx.policy.source,
        "digest": ctx.policy.digest,
        "previous_digest": None,
        "rules": [r.name for r in ctx.policy.rules],
        "trigger": "startup",
    }


def test_a_changed_file_is_recorded_then_decides(
    ctx: Context, demo: Demo, policy_file: PolicyFile, clock: FrozenClock
) -> None:
    old = ctx.policy.digest
    assert write_request(ctx, demo) == {"status": "denied", "version": old}
    policy_file.write(READS + WRITES)
    clock.advance(60)
    done = reload_policy(ctx, demo.admin, Trigger.API)
    assert done.changed
    assert (done.previous_digest, done.policy.digest) != (old, old)
    assert done.loaded_at == clock.now() == ctx.policy_loaded_at
    assert ctx.policy.digest == done.policy.digest == load_policy(policy_file.path).digest
    [loaded] = events(ctx.store, "policy.loaded")
    assert loaded == {
        "actor": "admin",
        "source": str(policy_file.path),
        "digest": done.policy.digest,
        "previous_digest": old,
        "rules": ["reads", "writes-at-once"],
        "trigger": "api",
    }
    assert write_request(ctx, demo) == {"status": "approved", "version": done.policy.digest}


def test_an_unchanged_file_changes_and_records_nothing(
    ctx: Context, demo: Demo, policy_file: PolicyFile
) -> None:
    before, loaded_at = last_seq(ctx.store), ctx.policy_loaded_at
    done = reload_policy(ctx, None, Trigger.SIGNAL)
    assert not done.changed
    assert done.previous_digest == done.policy.digest == ctx.policy.digest
    assert done.loaded_at == loaded_at
    assert last_seq(ctx.store) == before


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (BAD, f"policy.yaml:{BAD_SCOPE_LINE}:"),
        ("rules: [unclosed\n", "policy.yaml:"),
        (None, "cannot read the policy file"),
    ],
    ids=["bad-scope", "bad-yaml", "missing"],
)
def test_a_bad_file_is_refused_recorded_and_the_old_policy_keeps_deciding(
    ctx: Context, demo: Demo, policy_file: PolicyFile, content: str | None, expected: str
) -> None:
    old, loaded_at = ctx.policy, ctx.policy_loaded_at
    if content is None:
        policy_file.path.unlink()
    else:
        policy_file.write(content)
    with pytest.raises(PolicyRejected) as refused:
        reload_policy(ctx, None, Trigger.FILE_CHANGE)
    assert expected in refused.value.detail
    assert refused.value.code == "policy-rejected"
    assert ctx.policy is old
    assert ctx.policy_loaded_at == loaded_at
    [rejected] = events(ctx.store, "policy.rejected")
    assert rejected == {
        "actor": "system",
        "source": str(policy_file.path),
        "error": refused.value.detail,
        "digest_in_force": old.digest,
        "trigger": "file-change",
    }
    assert events(ctx.store, "policy.loaded") == []
    assert write_request(ctx, demo) == {"status": "denied", "version": old.digest}


def test_only_an_administrator_may_reload(
    ctx: Context, demo: Demo, policy_file: PolicyFile
) -> None:
    policy_file.write(READS + WRITES)
    before, old = last_seq(ctx.store), ctx.policy
    for who in (demo.alice, demo.bob):
        with pytest.raises(Forbidden):
            reload_policy(ctx, who, Trigger.API)
    assert ctx.policy is old
    assert last_seq(ctx.store) == before


def test_without_a_policy_file_there_is_nothing_to_reload(ctx: Context, demo: Demo) -> None:
    assert ctx.policy_file is None
    before = last_seq(ctx.store)
    with pytest.raises(Conflict) as refused:
        reload_policy(ctx, demo.admin, Trigger.API)
    assert refused.value.code == "no-policy-file"
    assert "policy_file" in refused.value.detail
    assert last_seq(ctx.store) == before


def test_a_policy_that_cannot_be_recorded_is_not_put_in_force(
    ctx: Context, demo: Demo, policy_file: PolicyFile
) -> None:
    old = ctx.policy
    policy_file.write(READS + WRITES)
    ctx.store = Store(create_engine("sqlite:////nonexistent-dir/for/jitgate.db"))
    with pytest.raises(Exception, match="unable to open database"):
        reload_policy(ctx, None, Trigger.SIGNAL)
    assert ctx.policy is old


def test_concurrent_reloads_record_each_version_once(
    ctx: Context, demo: Demo, policy_file: PolicyFile
) -> None:
    old = ctx.policy.digest
    policy_file.write(READS + WRITES)
    start = threading.Barrier(8)

    def reload() -> None:
        start.wait()
        reload_policy(ctx, None, Trigger.SIGNAL)

    threads = [threading.Thread(target=reload) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    [loaded] = events(ctx.store, "policy.loaded")
    assert loaded["previous_digest"] == old
    assert loaded["digest"] == ctx.policy.digest != old


def test_the_watcher_reloads_a_change_once_it_has_settled(
    ctx: Context, demo: Demo, policy_file: PolicyFile
) -> None:
    watcher = PolicyWatcher(ctx, policy_file.path)
    watcher.poll()  # the file as loaded: nothing to do
    assert events(ctx.store, "policy.loaded") == []
    old = ctx.policy.digest
    policy_file.write(READS + WRITES)
    watcher.poll()
    assert ctx.policy.digest == old, "a file that just changed may still be being written"
    watcher.poll()
    assert ctx.policy.digest != old
    [loaded] = events(ctx.store, "policy.loaded")
    assert (loaded["trigger"], loaded["previous_digest"]) == ("file-change", old)
    for _ in range(3):
        watcher.poll()
    assert len(events(ctx.store, "policy.loaded")) == 1


def test_the_watcher_records_each_bad_content_once(
    ctx: Context, demo: Demo, policy_file: PolicyFile
) -> None:
    watcher = PolicyWatcher(ctx, policy_file.path)
    old = ctx.policy
    policy_file.write(BAD)
    for _ in range(5):
        watcher.poll()
    assert len(events(ctx.store, "policy.rejected")) == 1
    policy_file.write(BAD)  # saved again, same content
    for _ in range(3):
        watcher.poll()
    assert len(events(ctx.store, "policy.rejected")) == 1
    policy_file.path.unlink()
    for _ in range(3):
        watcher.poll()
    rejected = events(ctx.store, "policy.rejected")
    assert len(rejected) == 2
    assert "cannot read" in rejected[-1]["error"]
    policy_file.write(READS)  # back to the policy in force: nothing to record
    for _ in range(3):
        watcher.poll()
    assert ctx.policy is old
    assert len(events(ctx.store, "policy.rejected")) == 2
    assert events(ctx.store, "policy.loaded") == []
