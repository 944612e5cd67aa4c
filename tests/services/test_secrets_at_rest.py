"""Secrets and tokens at rest, and authenticating principals.

Invariant 5: upstream secrets are never in the database in plaintext (nor in audit).
Invariant 8: principal tokens are stored only as hashes; grant tokens are not stored.
The test reads every column of every table raw, the way someone holding a copy of the
database would, and looks for each secret in every encoding it could plausibly take.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from jitgate.clock import FrozenClock
from jitgate.config import NotificationSettings, WebhookSettings
from jitgate.domain.models import Api, Injection, InjectionKind
from jitgate.errors import Forbidden, InvalidInput, NotFound, Unauthenticated
from jitgate.notify.router import NotifyRouter
from jitgate.secrets import Secret
from jitgate.services import access, directory, grants
from jitgate.services import audit as audit_service
from jitgate.services.context import Context
from jitgate.storage.tables import metadata, principal_tokens

from .conftest import Demo, add_principal, dump_database

SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _needles(value: str) -> list[bytes]:
    raw = value.encode()
    return [
        raw,
        raw.hex().encode(),
        base64.b64encode(raw),
        base64.urlsafe_b64encode(raw).rstrip(b"="),
    ]


def _assert_nowhere(ctx: Context, secrets: dict[str, str]) -> None:
    for where, value in dump_database(ctx.store):
        if value is None:
            continue
        if isinstance(value, memoryview):
            blob = bytes(value)
        elif isinstance(value, bytes):
            blob = value
        else:
            blob = str(value).encode()
        for name, secret in secrets.items():
            for needle in _needles(secret):
                assert needle not in blob, f"{name} found in {where}"


def test_no_secret_or_token_is_stored_in_the_clear(
    ctx: Context, demo: Demo, clock: FrozenClock
) -> None:
    payments_secret = "sk_live_" + "Zq9" * 12
    webhook_secret = "whsec_" + "Kp4" * 12
    # Notifications on, so that the outbox holds rows too: its payloads must not leak.
    ctx.store.router = NotifyRouter(
        NotificationSettings(
            webhooks=[
                WebhookSettings(
                    name="ops", url="http://127.0.0.1:9/hook", secret=SecretStr(webhook_secret)
                )
            ]
        ),
        control_url="http://127.0.0.1:8700",
    )
    directory.add_api(
        ctx,
        demo.admin,
        Api(
            "payments",
            "https://payments.example",
            Injection(InjectionKind.HEADER, "X-Api-Key", "{secret}"),
            "prod",
            frozenset({"payments-owners"}),
        ),
        Secret(payments_secret),
    )
    rotated = "sk_live_rotated_" + "Yy7" * 10
    directory.rotate_secret(ctx, demo.admin, "payments", Secret(rotated))
    extra = directory.issue_principal_token(ctx, demo.admin, "alice", label="laptop")
    grant = access.create_request(
        ctx, demo.alice, api="demo", scopes=["GET /x"], duration="5m", reason="r"
    ).grant
    assert grant is not None
    grant_token = grants.issue_token(ctx, demo.alice, grant.id).token
    grants.revoke(ctx, demo.alice, grant.id, "")
    pending = access.create_request(
        ctx, demo.alice, api="demo", scopes=["POST /x"], duration="5m", reason="w"
    ).request.id
    write = access.approve(ctx, demo.bob, pending).grant
    assert write is not None
    write_token = grants.issue_token(ctx, demo.alice, write.id).token
    assert audit_service.checkpoint(ctx) is not None

    secrets = {
        "demo upstream secret": demo.secret.reveal(),
        "payments secret": payments_secret,
        "webhook signing secret": webhook_secret,
        "rotated payments secret": rotated,
        "extra principal token": extra,
        "grant token": grant_token,
        "grant token signature": grant_token.rsplit(".", 1)[1],
        "second grant token": write_token,
        **{f"{name}'s principal token": token for name, token in demo.tokens.items()},
    }
    dumped = dump_database(ctx.store)
    # Every table has rows, so every table was really looked at.
    assert {where.split(".")[0] for where, _ in dumped} == {
        t.name for t in metadata.tables.values()
    }
    _assert_nowhere(ctx, secrets)
    # The secrets really are retrievable by the one who holds the master key.
    with ctx.store.transaction() as tx:
        blobs = {a.name: b for a, b in tx.directory.apis_with_secrets()}
    assert ctx.box.decrypt_secret(blobs["payments"], "api:payments").reveal() == rotated


def test_principal_tokens_are_stored_as_their_sha256(ctx: Context, demo: Demo) -> None:
    with ctx.store.transaction() as tx:
        stored = {
            r.principal_id: r.token_hash
            for r in tx.connection.execute(select(principal_tokens)).all()
            if r.label == "demo"
        }
    assert set(stored) == {"alice", "bob", "carol", "admin"}
    for pid, token in demo.tokens.items():
        assert SHA256_HEX.fullmatch(stored[pid])
        assert stored[pid] == hashlib.sha256(token.encode()).hexdigest()
        assert directory.hash_token(token) == stored[pid]


def test_principal_tokens_are_distinct_and_high_entropy(ctx: Context, demo: Demo) -> None:
    tokens = [directory.issue_principal_token(ctx, None, "bob") for _ in range(30)]
    tokens += list(demo.tokens.values())
    assert len(set(tokens)) == len(tokens)
    for token in tokens:
        assert token.startswith("jgp_")
        body = token.removeprefix("jgp_")
        assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", body)  # >= 32 random bytes, base64url
        assert len(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))) >= 32
    # Crude but telling: the characters are spread over the alphabet, not a counter.
    counts = Counter("".join(t.removeprefix("jgp_") for t in tokens))
    total = sum(counts.values())
    entropy = -sum(c / total * math.log2(c / total) for c in counts.values())
    assert entropy > 5.5  # log2(64) = 6 for perfectly uniform base64url
    # Every token works, for its own principal.
    assert {directory.authenticate(ctx, t).id for t in tokens[:30]} == {"bob"}


def test_authenticate_accepts_exactly_the_issued_tokens(
    ctx: Context, demo: Demo, clock: FrozenClock
) -> None:
    for pid, token in demo.tokens.items():
        assert directory.authenticate(ctx, token).id == pid
    alice = demo.tokens["alice"]
    bad = [
        None,
        "",
        "jgp_",
        "Bearer " + alice,
        alice + " ",
        " " + alice,
        alice[:-1],
        alice + "x",
        alice.upper(),
        alice.replace("jgp_", "jgx_"),
        alice.removeprefix("jgp_"),
        "jgp_" + "A" * 43,
        "jgp_" + "A" * 300,  # over the length limit
        hashlib.sha256(alice.encode()).hexdigest(),  # the stored hash is not a credential
        "jgp_" + hashlib.sha256(alice.encode()).hexdigest(),
        "jgp_\x00" + alice[4:],
    ]
    for token in bad:
        with pytest.raises(Unauthenticated):
            directory.authenticate(ctx, token)


def test_expired_token_is_refused(ctx: Context, demo: Demo, clock: FrozenClock) -> None:
    token = directory.issue_principal_token(
        ctx, demo.admin, "alice", expires_at=clock.now() + timedelta(hours=1)
    )
    assert directory.authenticate(ctx, token).id == "alice"
    clock.advance(timedelta(hours=1) - timedelta(microseconds=1))
    assert directory.authenticate(ctx, token).id == "alice"
    clock.advance(timedelta(microseconds=1))
    with pytest.raises(Unauthenticated):
        directory.authenticate(ctx, token)
    assert directory.authenticate(ctx, demo.tokens["alice"]).id == "alice"  # no expiry
    seq = len(dump_database(ctx.store))
    for bad in (
        {"expires_at": clock.now()},  # not in the future
        {"expires_at": clock.now() - timedelta(days=1)},
        {"expires_at": datetime(2030, 1, 1)},  # naive: a 4xx, not a TypeError
        {"label": "x" * 201},  # PostgreSQL would refuse it with a 500
    ):
        with pytest.raises(InvalidInput):
            directory.issue_principal_token(ctx, demo.admin, "alice", **bad)  # type: ignore[arg-type]
    assert len(dump_database(ctx.store)) == seq  # nothing written
    with pytest.raises(NotFound):
        directory.issue_principal_token(ctx, demo.admin, "nobody")


def test_disabled_principal_cannot_authenticate(ctx: Context, demo: Demo) -> None:
    with ctx.store.transaction() as tx:
        tx.directory.update_principal(replace(demo.bob, disabled=True))
    with pytest.raises(Unauthenticated):
        directory.authenticate(ctx, demo.tokens["bob"])
    assert directory.authenticate(ctx, demo.tokens["carol"]).id == "carol"


def test_only_admins_issue_tokens_and_add_apis(ctx: Context, demo: Demo) -> None:
    for actor in (demo.alice, demo.bob):
        with pytest.raises(Forbidden):
            directory.issue_principal_token(ctx, actor, actor.id)
        with pytest.raises(Forbidden):
            directory.rotate_secret(ctx, actor, "demo", Secret("sk_x"))
        with pytest.raises(Forbidden):
            directory.create_principal(ctx, actor, "sneaky", is_admin=True)
    assert [p.id for p in directory.list_principals(ctx) if p.is_admin] == ["admin"]
    for bad in ({"principal_id": "Bad Id"}, {"principal_id": "x", "display_name": "d" * 201}):
        with pytest.raises(InvalidInput):
            directory.create_principal(ctx, demo.admin, **bad)  # type: ignore[arg-type]
    assert "x" not in {p.id for p in directory.list_principals(ctx)}
    assert add_principal(ctx, "ok-user").is_admin is False


def test_secret_does_not_leak_through_repr_or_audit(ctx: Context, demo: Demo) -> None:
    secret = demo.secret.reveal()
    assert secret not in repr(demo.secret)
    assert secret not in str(demo.secret)
    assert secret not in f"{demo.secret}"
    with ctx.store.transaction() as tx:
        events = list(tx.audit.stream())
    assert not any(secret in str(e.as_dict()) for e in events)
    assert not any(t in str(e.as_dict()) for e in events for t in demo.tokens.values())
