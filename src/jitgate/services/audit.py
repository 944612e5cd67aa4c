"""Reading, verifying and checkpointing the audit log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from jitgate.audit.chain import ChainVerifier, VerifyResult
from jitgate.audit.checkpoint import (
    Checkpoint,
    check_against_chain,
    sign_checkpoint,
    verify_checkpoint_signature,
)
from jitgate.audit.events import ChainedEvent, EventType, NewEvent
from jitgate.domain.models import Principal
from jitgate.errors import Forbidden
from jitgate.services.context import Context
from jitgate.storage.audit_repo import AuditFilter, AuditRepo
from jitgate.storage.store import Store

AUDITOR_GROUP = "auditors"


@dataclass(frozen=True, slots=True)
class Verification:
    chain: VerifyResult
    checkpoint: Checkpoint | None
    checkpoint_problem: str | None

    @property
    def ok(self) -> bool:
        return self.chain.ok and self.checkpoint_problem is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            **self.chain.as_dict(),
            "checkpoint": self.checkpoint.as_dict() if self.checkpoint else None,
            "checkpoint_problem": self.checkpoint_problem,
        }


def require_auditor(actor: Principal) -> None:
    if not (actor.is_admin or AUDITOR_GROUP in actor.groups):
        raise Forbidden(
            f"reading the audit log needs an administrator or the {AUDITOR_GROUP!r} group",
            code="not-auditor",
        )


def query(
    ctx: Context, actor: Principal, f: AuditFilter, *, after: int = 0, limit: int = 100
) -> list[ChainedEvent]:
    require_auditor(actor)
    with ctx.store.read() as tx:
        return tx.audit.query(f, after=after, limit=limit)


def verify_store(store: Store, public_keys: dict[str, Ed25519PublicKey]) -> Verification:
    """Walk the whole chain, then hold it against the latest signed checkpoint."""
    verifier = ChainVerifier()
    with store.engine.connect() as connection:
        repo = AuditRepo(connection)
        for event in repo.stream():
            if not verifier.feed(event):
                break
        result = verifier.result()
        checkpoint = repo.latest_checkpoint()
        problem = None
        if checkpoint is not None:
            if not verify_checkpoint_signature(checkpoint, public_keys):
                problem = f"checkpoint at seq {checkpoint.seq}: signature does not verify"
            else:
                problem = check_against_chain(
                    checkpoint, repo.hash_at(checkpoint.seq), result.head_seq
                )
    return Verification(chain=result, checkpoint=checkpoint, checkpoint_problem=problem)


def verify(ctx: Context, actor: Principal) -> Verification:
    require_auditor(actor)
    return verify_store(ctx.store, dict(ctx.keyring.public_keys))


def checkpoint(ctx: Context) -> Checkpoint | None:
    """Sign the current head (if it moved since the last checkpoint) and store it."""
    now = ctx.now()
    with ctx.store.transaction() as tx:
        last = tx.audit.latest_checkpoint()
        seq, head_hash = tx.audit.head()
        if seq == 0 or (last is not None and last.seq == seq):
            return None
        ring = ctx.keyring
        cp = sign_checkpoint(seq, head_hash, now, ring.signing_kid, ring.signing_key)
        tx.audit.insert_checkpoint(cp)
        tx.audit.append(
            [
                NewEvent(
                    type=EventType.AUDIT_CHECKPOINT,
                    at=now,
                    actor="system",
                    data={"seq": seq, "hash": head_hash, "kid": ring.signing_kid},
                )
            ]
        )
    return cp
