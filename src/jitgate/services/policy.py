"""The policy in force: recording it at start-up, and replacing it without a restart.

Guarantees:

* A policy version's digest is in the audit log (``policy.loaded``) before any request is
  decided under it: the event is committed first, the policy swapped in after. If the
  event cannot be written, the policy in force stays.
* A file that does not load leaves the policy in force untouched. The refusal is
  recorded (``policy.rejected``, with the loader's ``file:line`` detail; a policy holds
  no secrets) and raised as :class:`PolicyRejected`.
* Reloading a file whose digest is the one in force changes and records nothing.
* Reloads in one process are serialised (the API, SIGHUP and the file watcher may ask at
  once), so ``previous_digest`` is always the version that was replaced.
* Only the configured ``policy_file`` is reloaded. The built-in demo policy, and the
  deny-everything policy of a process without ``policy_file``, last for the process's
  life: asking to reload them is a :class:`~jitgate.errors.Conflict`.

Audit data (keys are append-only): ``policy.loaded`` ``{source, digest, previous_digest,
rules, trigger}``; ``policy.rejected`` ``{source, error, digest_in_force, trigger}``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from jitgate.audit.events import EventType, NewEvent
from jitgate.domain.models import Principal
from jitgate.errors import Conflict, InvalidInput, JitgateError
from jitgate.policy import load_policy
from jitgate.policy.model import Policy
from jitgate.services.context import Context, require_admin

log = logging.getLogger(__name__)

_reload_lock = threading.Lock()


class Trigger(StrEnum):
    """What loaded a policy; recorded as ``trigger`` in the audit data. Append-only."""

    STARTUP = "startup"
    API = "api"
    SIGNAL = "signal"
    FILE_CHANGE = "file-change"


class PolicyRejected(InvalidInput):
    """The policy file does not load; the policy in force stays."""

    code = "policy-rejected"


@dataclass(frozen=True, slots=True)
class Reload:
    """The outcome of a reload that did not fail: the policy in force now, and since when."""

    policy: Policy
    previous_digest: str
    loaded_at: datetime

    @property
    def changed(self) -> bool:
        return self.policy.digest != self.previous_digest


def record_policy(
    ctx: Context,
    policy: Policy,
    *,
    actor: str = "system",
    trigger: Trigger = Trigger.STARTUP,
    previous_digest: str | None = None,
) -> None:
    """Append ``policy.loaded`` for ``policy`` (committed when this returns)."""
    _append(
        ctx,
        EventType.POLICY_LOADED,
        actor,
        {
            "source": policy.source,
            "digest": policy.digest,
            "previous_digest": previous_digest,
            "rules": [r.name for r in policy.rules],
            "trigger": str(trigger),
        },
    )


def reload_policy(ctx: Context, actor: Principal | None, trigger: Trigger) -> Reload:
    """Load ``ctx.policy_file`` again and put it in force if it differs.

    ``actor`` None is the process itself (SIGHUP, file change); a principal must be an
    administrator. Raises :class:`PolicyRejected` (recorded) for a file that does not
    load and ``Conflict`` when no ``policy_file`` is configured.
    """
    if actor is not None:
        require_admin(actor.is_admin, "reload the policy")
    path = ctx.policy_file
    if path is None:
        raise Conflict(
            "no policy_file is configured: this process runs on a built-in policy (the "
            "demo's, or deny-everything), which cannot be reloaded; set policy_file and restart",
            code="no-policy-file",
        )
    who = actor.id if actor is not None else "system"
    with _reload_lock:
        current = ctx.policy
        try:
            loaded = load_policy(path)
        except JitgateError as exc:
            _append(
                ctx,
                EventType.POLICY_REJECTED,
                who,
                {
                    "source": str(path),
                    "error": exc.detail,
                    "digest_in_force": current.digest,
                    "trigger": str(trigger),
                },
            )
            log.error(
                "policy rejected (%s, by %s); %s stays in force: %s",
                trigger,
                who,
                current.digest[:12],
                exc.detail,
            )
            raise PolicyRejected(exc.detail) from exc
        if loaded.digest == current.digest:
            log.info("policy unchanged (%s, by %s): %s", trigger, who, current.digest[:12])
            return Reload(current, current.digest, ctx.policy_loaded_at)
        record_policy(ctx, loaded, actor=who, trigger=trigger, previous_digest=current.digest)
        ctx.replace_policy(loaded)
        done = Reload(loaded, current.digest, ctx.policy_loaded_at)
    log.info(
        "policy reloaded (%s, by %s): %s, was %s, %d rule(s)",
        trigger,
        who,
        loaded.digest[:12],
        current.digest[:12],
        len(loaded.rules),
    )
    return done


def reload_in_background(ctx: Context, trigger: Trigger) -> None:
    """A reload the process asks for itself (SIGHUP, file change): the outcome is logged
    (and a refusal audited) by :func:`reload_policy`; nothing is raised to the caller."""
    try:
        reload_policy(ctx, None, trigger)
    except PolicyRejected:
        return  # logged and audited where it was refused
    except JitgateError as exc:
        log.warning("policy not reloaded (%s): %s", trigger, exc.detail)


_Stat = tuple[int, ...]  # (inode, size, mtime_ns); () when the file cannot be read


def _stat(path: Path) -> _Stat:
    try:
        st = path.stat()
    except OSError:
        return ()
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class PolicyWatcher:
    """Reloads ``ctx.policy_file`` when its content changes; :meth:`poll` it every second.

    A change is acted on once the file's inode, size and modification time have stayed
    the same for one poll, so that an editor writing in place never hands over half a
    file. Each distinct content is tried once: a bad edit is logged and audited once, not
    at every poll. (Polling needs no dependency, and works on every file system,
    including a Kubernetes ConfigMap's symlink swap.)
    """

    def __init__(self, ctx: Context, path: Path) -> None:
        self._ctx = ctx
        self._path = path
        self._seen = _stat(path)
        self._tried: _Stat | None = None  # first poll: compare the content with the policy
        self._tried_digest: str | None = ctx.policy.digest

    def poll(self) -> None:
        stat = _stat(self._path)
        if stat != self._seen:
            self._seen = stat
            return  # it changed since the last poll: act once it has settled
        if stat == self._tried:
            return
        self._tried = stat
        digest = _digest(self._path)
        if digest is not None and digest == self._tried_digest:
            return
        self._tried_digest = digest
        reload_in_background(self._ctx, Trigger.FILE_CHANGE)


def _append(ctx: Context, kind: EventType, actor: str, data: dict[str, Any]) -> None:
    with ctx.store.transaction() as tx:
        tx.audit.append([NewEvent(type=kind, at=ctx.now(), actor=actor, data=data)])
