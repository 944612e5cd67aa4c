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
    head_problem: str | None = None  # the chain disagrees with the audit_head row

    @property
    def ok(self) -> bool:
        return self.chain.ok and self.checkpoint_problem is None and self.head_problem is None

    @property
    def problem(self) -> str | None:
        """The first thing found wrong: in the chain, against the checkpoint, at the head."""
        return self.chain.problem or self.checkpoint_problem or self.head_problem

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.chain.as_dict(),
            # After the chain's fields, so that they win: the chain's own "ok" and
            # "problem" speak only for the hash links, which a cut or consistently
            # rewritten log keeps intact.
            "ok": self.ok,
            "chain_ok": self.chain.ok,
            "problem": self.problem,
            "checkpoint": self.checkpoint.as_dict() if self.checkpoint else None,
            "checkpoint_problem": self.checkpoint_problem,
            "head_problem": self.head_problem,
        }


def require_auditor(actor: Principal) -> None:
    if not (actor.is_admin or AUDITOR_GROUP in actor.groups):
        raise Forbidden(
            f"reading the audit log needs an administrator or the {AUDITOR_GROUP!r} group",
            code="not-auditor",
        )


def query(
    ctx: Context,
    actor: Principal,
    f: AuditFilter,
    *,
    after: int = 0,
    before: int | None = None,
    limit: int = 100,
) -> list[ChainedEvent]:
    require_auditor(actor)
    with ctx.store.read() as tx:
        return tx.audit.query(f, after=after, before=before, limit=limit)


def verify_store(store: Store, public_keys: dict[str, Ed25519PublicKey]) -> Verification:
    """Walk the whole chain, then hold it against the recorded head and the latest
    signed checkpoint.

    The head and the checkpoint are read *before* the walk: every event they name was
    committed with them, so appends racing the walk raise no false alarm, while a chain
    that ends short of either was cut. Events past the head as read *after* the walk
    were not written through the head lock: they were added behind jitgate's back.
    """
    verifier = ChainVerifier()
    with store.read() as tx:
        repo = tx.audit
        recorded = repo.head()
        checkpoint = repo.latest_checkpoint()
        for event in repo.stream():
            if not verifier.feed(event):
                break
        result = verifier.result()
        head_problem = _head_problem(repo, result, recorded) if result.ok else None
        problem = None
        if checkpoint is not None:
            if not verify_checkpoint_signature(checkpoint, public_keys):
                problem = f"checkpoint at seq {checkpoint.seq}: signature does not verify"
            else:
                problem = check_against_chain(
                    checkpoint, repo.hash_at(checkpoint.seq), result.head_seq
                )
    return Verification(
        chain=result, checkpoint=checkpoint, checkpoint_problem=problem, head_problem=head_problem
    )


def _head_problem(repo: AuditRepo, chain: VerifyResult, recorded: tuple[int, str]) -> str | None:
    """What is wrong between an intact chain and the ``audit_head`` row, if anything."""
    seq, head_hash = recorded
    if chain.head_seq < seq:
        return (
            f"chain ends at seq {chain.head_seq} but the recorded head is seq {seq}: "
            "events were deleted from the end (truncated)"
        )
    if seq and repo.hash_at(seq) != head_hash:
        return f"event {seq}: hash differs from the recorded head: history was rewritten"
    now_seq, _ = repo.head()
    if chain.head_seq > now_seq:
        return (
            f"chain runs to seq {chain.head_seq}, past the recorded head seq {now_seq}: "
            "events were added outside jitgate"
        )
    return None


def stored_public_keys(store: Store) -> dict[str, Ed25519PublicKey]:
    """Every signing key ever used, retired ones included: old checkpoints stay checkable
    after their key has stopped signing tokens."""
    with store.read() as tx:
        return {
            k.kid: Ed25519PublicKey.from_public_bytes(k.public_key)
            for k in tx.directory.list_keys()
        }


def verify(ctx: Context, actor: Principal) -> Verification:
    require_auditor(actor)
    return verify_store(ctx.store, stored_public_keys(ctx.store))


def latest_checkpoint(ctx: Context) -> Checkpoint | None:
    with ctx.store.read() as tx:
        return tx.audit.latest_checkpoint()


def checkpoint(ctx: Context, actor: str = "system") -> Checkpoint | None:
    """Sign the current head (if it moved since the last checkpoint) and store it.

    The audit event carries the whole signed checkpoint, so an export of the log holds
    checkpoints that anyone can check against the JWKS, without jitgate.
    """
    now = ctx.now()
    with ctx.store.transaction() as tx:
        last = tx.audit.latest_checkpoint()
        seq, head_hash = tx.audit.head()
        # The last checkpoint's own event (appended with it, at last.seq + 1) does not
        # count as a move: otherwise an idle log would grow by one event per run.
        if seq == 0 or (last is not None and seq <= last.seq + 1):
            return None
        ring = ctx.keyring
        cp = sign_checkpoint(seq, head_hash, now, ring.signing_kid, ring.signing_key)
        tx.audit.insert_checkpoint(cp)
        tx.audit.append(
            [
                NewEvent(
                    type=EventType.AUDIT_CHECKPOINT,
                    at=now,
                    actor=actor,
                    data=cp.as_dict(),
                )
            ]
        )
    return cp
