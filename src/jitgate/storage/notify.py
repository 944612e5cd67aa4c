"""Change notices on PostgreSQL: ``pg_notify`` inside the transaction of the change.

Gateways in other processes listen on :data:`CHANNEL` (:mod:`jitgate.gateway.listener`)
and resync at once when a notice arrives. Guarantees:

* A notice is sent in the same transaction as the change it announces: PostgreSQL
  delivers it when that transaction commits, and never if it rolls back.
* On SQLite it does nothing (one process; revocations reach its gateway through the
  change feed).
* A notice is a hint, never an authority: a listener only learns "something of this
  kind changed" and reads the database itself. Payloads are short ASCII, at most
  :data:`MAX_PAYLOAD` characters, and :func:`parse` refuses anything else.

Wire format (append-only, fields are never reordered): ``grant_ended <grant id>
<expiry, POSIX seconds>``, ``apis_changed``, ``keys_changed``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from jitgate.storage.database import normalise_url

CHANNEL = "jitgate_changes"
MAX_PAYLOAD = 128
_GRANT_ID = re.compile(r"[a-z]{1,8}_[0-9a-z]{1,32}")


class Change(StrEnum):
    GRANT_ENDED = "grant_ended"
    APIS_CHANGED = "apis_changed"
    KEYS_CHANGED = "keys_changed"


@dataclass(frozen=True, slots=True)
class Notice:
    change: Change
    grant_id: str | None = None
    expires_at: int | None = None  # POSIX seconds


def notify(connection: Connection, change: Change, *fields: str) -> None:
    """Announce ``change`` when the current transaction commits (PostgreSQL only)."""
    if connection.dialect.name != "postgresql":
        return
    payload = " ".join((change.value, *fields))
    connection.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": payload})


def notify_grant_ended(connection: Connection, grant_id: str, expires_at: datetime) -> None:
    notify(connection, Change.GRANT_ENDED, grant_id, str(int(expires_at.timestamp())))


def parse(payload: str) -> Notice | None:
    """The notice in ``payload``, or None when it is not one we send."""
    if len(payload) > MAX_PAYLOAD or not payload.isascii():
        return None
    kind, *fields = payload.split(" ")
    if kind in (Change.APIS_CHANGED, Change.KEYS_CHANGED) and not fields:
        return Notice(Change(kind))
    if kind == Change.GRANT_ENDED and len(fields) == 2:
        grant_id, expiry = fields
        if _GRANT_ID.fullmatch(grant_id) and expiry.isdigit() and len(expiry) <= 12:
            return Notice(Change.GRANT_ENDED, grant_id, int(expiry))
    return None


def listen_conninfo(database_url: str) -> str | None:
    """The libpq connection string for listening, or None when the database is not
    PostgreSQL (nothing to listen to)."""
    url = make_url(normalise_url(database_url))
    if url.get_backend_name() != "postgresql":
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)
