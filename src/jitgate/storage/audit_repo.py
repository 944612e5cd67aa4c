"""The audit log's rows: append under the head lock, query, stream, checkpoints.

Appending locks the single ``audit_head`` row first, so concurrent transactions add
to the chain one after another; the events and the new head commit together with
the change they describe, or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, RowMapping, func, insert, select, update

from jitgate.audit.chain import data_json, link
from jitgate.audit.checkpoint import Checkpoint
from jitgate.audit.events import ChainedEvent, NewEvent
from jitgate.storage.tables import audit_checkpoints, audit_events, audit_head


@dataclass(frozen=True, slots=True)
class AuditFilter:
    type: str | None = None  # exact type, or a prefix ending in "." / "*" ("access.*")
    actor: str | None = None
    principal: str | None = None
    api: str | None = None
    grant: str | None = None
    request: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def event_row(e: ChainedEvent) -> dict[str, Any]:
    """The ``audit_events`` row of a chained event (``data`` as canonical JSON text)."""
    return {
        "seq": e.seq,
        "at": e.at,
        "type": e.type,
        "actor": e.actor,
        "principal": e.principal,
        "api": e.api,
        "grant_id": e.grant,
        "request_id": e.request,
        "data": data_json(e),
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    }


def _event(row: RowMapping) -> ChainedEvent:
    return ChainedEvent(
        seq=row["seq"],
        at=row["at"],
        type=row["type"],
        actor=row["actor"],
        principal=row["principal"],
        api=row["api"],
        grant=row["grant_id"],
        request=row["request_id"],
        data=json.loads(row["data"]),
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


class AuditRepo:
    def __init__(
        self,
        connection: Connection,
        on_append: Callable[[Sequence[ChainedEvent]], None] | None = None,
    ) -> None:
        self._c = connection
        self._on_append = on_append  # called in the same transaction, after the events

    def append(self, events: Sequence[NewEvent]) -> list[ChainedEvent]:
        if not events:
            return []
        head = self._c.execute(
            select(audit_head.c.seq, audit_head.c.hash)
            .where(audit_head.c.id == 1)
            .with_for_update()
        ).one()
        seq, prev = head.seq, head.hash
        chained = []
        for event in events:
            seq += 1
            item = link(prev, seq, event)
            chained.append(item)
            prev = item.hash
        self._c.execute(
            insert(audit_events),
            [event_row(e) for e in chained],
        )
        self._c.execute(update(audit_head).where(audit_head.c.id == 1).values(seq=seq, hash=prev))
        if self._on_append is not None:
            self._on_append(chained)
        return chained

    def last_allowed(self, grant_ids: Sequence[str]) -> dict[str, datetime]:
        """When each grant last had a call admitted (``access.allowed``), if ever."""
        if not grant_ids:
            return {}
        e = audit_events.c
        query = (
            select(e.grant_id, func.max(e.at))
            .where(e.type == "access.allowed", e.grant_id.in_(list(grant_ids)))
            .group_by(e.grant_id)
        )
        return {str(row[0]): row[1] for row in self._c.execute(query)}

    def allowed_counts(self, grant_ids: Sequence[str]) -> dict[str, int]:
        """How many calls each grant has had admitted (``access.allowed``)."""
        if not grant_ids:
            return {}
        e = audit_events.c
        query = (
            select(e.grant_id, func.count())
            .where(e.type == "access.allowed", e.grant_id.in_(list(grant_ids)))
            .group_by(e.grant_id)
        )
        return {str(row[0]): int(row[1]) for row in self._c.execute(query)}

    def head(self) -> tuple[int, str]:
        row = self._c.execute(select(audit_head.c.seq, audit_head.c.hash)).one()
        return int(row.seq), str(row.hash)

    def query(
        self, f: AuditFilter, *, after: int = 0, before: int | None = None, limit: int = 100
    ) -> list[ChainedEvent]:
        """Matching events in ``seq`` order: the first ``limit`` after ``after`` or, with
        ``before``, the last ``limit`` before it (still returned oldest first)."""
        c = audit_events.c
        query = select(audit_events).where(c.seq > after)
        if before is not None:
            query = query.where(c.seq < before)
        if f.type:
            if f.type.endswith(("*", ".")):
                query = query.where(c.type.startswith(f.type.rstrip("*"), autoescape=True))
            else:
                query = query.where(c.type == f.type)
        for column, value in (
            (c.actor, f.actor),
            (c.principal, f.principal),
            (c.api, f.api),
            (c.grant_id, f.grant),
            (c.request_id, f.request),
        ):
            if value is not None:
                query = query.where(column == value)
        if f.since is not None:
            query = query.where(c.at >= f.since)
        if f.until is not None:
            query = query.where(c.at < f.until)
        newest_first = before is not None
        query = query.order_by(c.seq.desc() if newest_first else c.seq).limit(limit)
        events = [_event(r._mapping) for r in self._c.execute(query)]
        return events[::-1] if newest_first else events

    def stream(self, *, batch: int = 2000) -> Iterator[ChainedEvent]:
        """Every event in ``seq`` order, read in pages (constant memory)."""
        after = 0
        while True:
            rows = self._c.execute(
                select(audit_events)
                .where(audit_events.c.seq > after)
                .order_by(audit_events.c.seq)
                .limit(batch)
            ).all()
            if not rows:
                return
            for row in rows:
                yield _event(row._mapping)
            after = rows[-1].seq

    def hash_at(self, seq: int) -> str | None:
        row = self._c.execute(select(audit_events.c.hash).where(audit_events.c.seq == seq)).first()
        return str(row.hash) if row else None

    def last_seq(self) -> int:
        row = self._c.execute(
            select(audit_events.c.seq).order_by(audit_events.c.seq.desc()).limit(1)
        ).first()
        return int(row.seq) if row else 0

    def insert_checkpoint(self, cp: Checkpoint) -> None:
        self._c.execute(
            insert(audit_checkpoints).values(
                seq=cp.seq, hash=cp.hash, at=cp.at, kid=cp.key_id, signature=cp.signature
            )
        )

    def latest_checkpoint(self) -> Checkpoint | None:
        row = self._c.execute(
            select(audit_checkpoints).order_by(audit_checkpoints.c.seq.desc()).limit(1)
        ).first()
        if row is None:
            return None
        return Checkpoint(
            seq=row.seq, hash=row.hash, at=row.at, key_id=row.kid, signature=row.signature
        )
