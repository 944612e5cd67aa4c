"""The delivery worker: claim due outbox rows, send them, record what happened.

One :meth:`Deliverer.run_once` claims up to ``batch`` due rows (one short transaction),
sends them all concurrently with aiohttp (each attempt bounded by ``timeout``), and
records the outcomes (one more transaction). A 2xx answer delivers a webhook; Slack
must also answer ``{"ok": true}``. Anything else is a failed attempt, retried after an
exponential back-off with jitter (``backoff`` doubling per attempt, capped at
``max_backoff``, then a random point in its upper half); after ``max_attempts`` the row is
``dead``, visible in ``GET /v1/notifications`` until an administrator retries it.

Secrets (webhook secrets, the Slack bot token) come from the settings at the moment of
sending; they are never written to the outbox, nor into ``last_error``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from datetime import timedelta

import aiohttp

from jitgate import __version__
from jitgate.clock import Clock
from jitgate.config import NotificationSettings
from jitgate.notify.signing import SIGNATURE_HEADER, sign_webhook
from jitgate.storage.outbox_repo import Channel, Notification
from jitgate.storage.store import Store

log = logging.getLogger(__name__)

_MAX_ANSWER = 64 * 1024  # bytes of an answer read (Slack's JSON, or an error's start)
_USER_AGENT = f"jitgate/{__version__}"


class Deliverer:
    def __init__(
        self,
        store: Store,
        settings: NotificationSettings,
        clock: Clock,
        *,
        rng: random.Random | None = None,
        batch: int = 50,
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        self._batch = batch
        self._webhooks = {hook.name: hook for hook in settings.webhooks}
        self._seconds = settings.timeout.total_seconds()
        # A claimed row is not claimed again before its lease ends: longer than a batch.
        self._lease = timedelta(seconds=2 * self._seconds + 30)

    def run_once(self) -> int:
        """Deliver what is due now; the number delivered. Blocking: run it in a thread."""
        now = self._clock.now()
        with self._store.transaction() as tx:
            due = tx.outbox.claim_due(now, now + self._lease, self._batch)
        if not due:
            return 0
        errors = asyncio.run(self._send_all(due))
        done = self._clock.now()
        with self._store.transaction() as tx:
            for item, error in zip(due, errors, strict=True):
                if error is None:
                    tx.outbox.mark_delivered(item.id, done)
                elif item.attempts >= self._settings.max_attempts:
                    log.warning(
                        "notification %s to %s %s is dead after %d attempts: %s",
                        item.id,
                        item.channel.value,
                        item.target,
                        item.attempts,
                        error,
                    )
                    tx.outbox.mark_failed(item.id, error, None)
                else:
                    tx.outbox.mark_failed(item.id, error, done + self.backoff(item.attempts))
        return errors.count(None)

    def backoff(self, attempts: int) -> timedelta:
        """The wait after the ``attempts``-th failed attempt (1 for the first)."""
        base = self._settings.backoff.total_seconds()
        cap = self._settings.max_backoff.total_seconds()
        delay = min(cap, base * 2 ** min(attempts - 1, 32))
        return timedelta(seconds=delay / 2 + self._rng.uniform(0, delay / 2))

    async def _send_all(self, due: list[Notification]) -> list[str | None]:
        timeout = aiohttp.ClientTimeout(total=self._seconds)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            return list(await asyncio.gather(*(self._send(session, n) for n in due)))

    async def _send(self, session: aiohttp.ClientSession, n: Notification) -> str | None:
        """None when delivered, else why not (never containing a secret)."""
        try:
            if n.channel is Channel.WEBHOOK:
                return await self._webhook(session, n)
            return await self._slack(session, n)
        except TimeoutError:
            return f"no answer within {self._seconds:g}s"
        except (aiohttp.ClientError, OSError) as exc:
            return f"cannot deliver: {type(exc).__name__}"

    async def _webhook(self, session: aiohttp.ClientSession, n: Notification) -> str | None:
        hook = self._webhooks.get(n.target)
        if hook is None:
            return f"no webhook named {n.target!r} is configured"
        body = json.dumps(n.payload, separators=(",", ":"), sort_keys=True).encode()
        signature = sign_webhook(hook.secret.get_secret_value(), body, int(self._clock.timestamp()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": _USER_AGENT,
            SIGNATURE_HEADER: signature,
            "X-Jitgate-Event": n.event_type,
            "X-Jitgate-Delivery": n.id,
            "X-Jitgate-Priority": n.priority.value,
        }
        async with session.post(hook.url, data=body, headers=headers, allow_redirects=False) as r:
            if 200 <= r.status < 300:
                return None
            start = (await r.content.read(200)).decode("utf-8", errors="replace")
            return f"HTTP {r.status}: {start}".strip()

    async def _slack(self, session: aiohttp.ClientSession, n: Notification) -> str | None:
        slack = self._settings.slack
        if slack is None:
            return "Slack is not configured"
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Authorization": f"Bearer {slack.bot_token.get_secret_value()}",
            "User-Agent": _USER_AGENT,
        }
        url = slack.api_url.rstrip("/") + "/chat.postMessage"
        body = json.dumps(n.payload, separators=(",", ":")).encode()
        async with session.post(url, data=body, headers=headers, allow_redirects=False) as r:
            raw = await r.content.read(_MAX_ANSWER)
            if r.status != 200:
                return f"Slack answered HTTP {r.status}"
        try:
            answer = json.loads(raw)
        except ValueError:
            return "Slack answered something other than JSON"
        if isinstance(answer, dict) and answer.get("ok") is True:
            return None
        error = answer.get("error") if isinstance(answer, dict) else None
        return f"Slack refused the message: {str(error or 'no reason given')[:200]}"
