"""The streaming reverse proxy (aiohttp server and client).

For each call: enforce (:mod:`jitgate.gateway.enforce`), build the upstream request
from the caller's — minus its credential, hop-by-hop headers (and those named in
``Connection``), ``Host`` and any copy of the upstream credential header — then inject
the secret last, stream the body up and the answer back, and audit the outcome. Upstream
redirects are passed back, never followed; upstream connections are pooled. Every
spelling of the secret is scrubbed from the answer's reason phrase and headers (not
from its body, which is streamed as is). ``Expect: 100-continue`` is answered here, and
only once the call is allowed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from urllib.parse import quote, unquote_plus

import aiohttp
from aiohttp import HttpVersion11, web
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import Counter
from yarl import URL

from jitgate.audit.events import EventType, NewEvent
from jitgate.clock import Clock, utc
from jitgate.gateway.enforce import Allow, Deny, Enforcer
from jitgate.gateway.view import Upstream
from jitgate.problems import PROBLEM_CONTENT_TYPE, problem
from jitgate.services.context import AuditSink

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_CHUNK = 64 * 1024
DECISIONS = Counter(
    "jitgate_gateway_decisions_total",
    "Gateway decisions by outcome and reason",
    ["outcome", "reason"],
)
ALLOWED = DECISIONS.labels("allowed", "")


def _connection_named(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    named: set[str] = set()
    for value in headers.getall("connection", []):
        named.update(part.strip().lower() for part in value.split(",") if part.strip())
    return named


def upstream_headers(headers: CIMultiDictProxy[str], upstream: Upstream) -> CIMultiDict[str]:
    # "expect" is answered by the gateway itself (see _continue): forwarded, it makes the
    # client library wait for an upstream "100 Continue" that may never come.
    drop = {"host", "authorization", "expect", *HOP_BY_HOP, *_connection_named(headers)}
    if upstream.header_name:
        drop.add(upstream.header_name)
    out = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)
    if upstream.header_name:  # injected last: nothing the caller sent can remove it
        out[upstream.header_name] = upstream.header_value
    return out


def upstream_query(query: str, upstream: Upstream) -> str:
    if upstream.query_name is None:
        return query
    kept = [
        part
        for part in query.split("&")
        if part and unquote_plus(part.partition("=")[0]) != upstream.query_name
    ]
    kept.append(f"{quote(upstream.query_name)}={quote(upstream.secret.reveal(), safe='')}")
    return "&".join(kept)


def response_headers(
    headers: CIMultiDictProxy[str], spellings: tuple[str, ...]
) -> Iterable[tuple[str, str]]:
    """The upstream's headers minus hop-by-hop ones, each spelling of the secret redacted."""
    drop = HOP_BY_HOP | _connection_named(headers)
    for key, value in headers.items():
        if key.lower() in drop:
            continue
        yield key, _scrub(value, spellings)


def _scrub(value: str, spellings: tuple[str, ...]) -> str:
    for spelling in spellings:
        value = value.replace(spelling, "[redacted]")
    return value


async def _continue(request: web.BaseRequest) -> None:
    """Answer ``Expect: 100-continue``: only an allowed call gets to send its body."""
    expect = request.headers.get("Expect", "")
    if request.version >= HttpVersion11 and expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim answer is not part of the response


def problem_response(deny: Deny) -> web.Response:
    body = problem(deny.status, deny.reason, deny.detail)
    headers = {"Content-Type": PROBLEM_CONTENT_TYPE}
    if deny.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="jitgate"'
    return web.Response(status=deny.status, text=json.dumps(body), headers=headers)


class Proxy:
    def __init__(
        self,
        enforcer: Enforcer,
        audit: AuditSink,
        clock: Clock,
        *,
        connect_timeout: float,
        timeout: float,
    ) -> None:
        self.enforcer = enforcer
        self.audit = audit
        self.clock = clock
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_read=timeout
        )
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=512, keepalive_timeout=30, ttl_dns_cache=60),
            timeout=self._timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _record(self, event: NewEvent) -> None:
        """Queue an audit event without blocking the event loop; a full queue makes this
        call wait in a worker thread (back-pressure on this request, never loss)."""
        if not self.audit.try_submit(event):
            await asyncio.to_thread(self.audit.submit, event)

    async def record_denial(self, request: web.BaseRequest, deny: Deny, now: float) -> None:
        claims = deny.token.claims if deny.token else None
        await self._record(
            NewEvent(
                type=EventType.ACCESS_DENIED,
                at=utc(now),
                actor=claims.principal if claims else None,
                principal=claims.principal if claims else None,
                api=deny.api,
                grant=claims.grant_id if claims else None,
                data={
                    "method": request.method[:16],
                    "target": request.raw_path.partition("?")[0][:512],  # with the API prefix
                    "status": deny.status,
                    "reason": deny.reason,
                    "detail": deny.detail,
                },
            )
        )

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        now = self.clock.timestamp()
        decision = self.enforcer.decide(request.method, request.raw_path, request.headers, now)
        if isinstance(decision, Allow) and not self.audit.healthy:
            decision = Deny(503, "audit-unavailable", "access cannot be recorded right now; denied")
        if isinstance(decision, Deny):
            DECISIONS.labels("denied", decision.reason).inc()
            await self.record_denial(request, decision, now)
            return problem_response(decision)
        ALLOWED.inc()
        started = time.perf_counter()
        # What the audit says if forwarding raises (e.g. the handler is cancelled).
        status: int = 500
        error: str | None = "internal-error"
        try:
            response, error = await self._forward(request, decision)
            status = response.status
            return response
        finally:  # every forwarded call is audited, however it ended
            claims = decision.token.claims
            await self._record(
                NewEvent(
                    type=EventType.ACCESS_ALLOWED,
                    at=utc(now),
                    actor=claims.principal,
                    principal=claims.principal,
                    api=decision.upstream.api.name,
                    grant=claims.grant_id,
                    data={
                        "method": request.method,
                        "path": decision.path[:512],
                        "status": status,
                        "ms": round((time.perf_counter() - started) * 1000, 2),
                        "jti": claims.jti,
                        **({"error": error} if error else {}),
                    },
                )
            )

    async def _forward(
        self, request: web.BaseRequest, allow: Allow
    ) -> tuple[web.StreamResponse, str | None]:
        assert self._session is not None, "Proxy.start() was not awaited"
        upstream = allow.upstream
        query = upstream_query(allow.query, upstream)
        url = URL(upstream.api.base_url + allow.path + (f"?{query}" if query else ""), encoded=True)
        body = request.content if request.body_exists else None
        if body is not None:
            await _continue(request)
        try:
            upstream_response = await self._session.request(
                request.method,
                url,
                headers=upstream_headers(request.headers, upstream),
                data=body,
                allow_redirects=False,
            )
        except TimeoutError:
            deny = Deny(504, "upstream-timeout", "the upstream did not answer in time")
            return problem_response(deny), deny.reason
        except aiohttp.ClientError as exc:
            log.warning("upstream %s failed: %s", upstream.api.name, type(exc).__name__)
            deny = Deny(502, "upstream-unreachable", "the upstream could not be reached")
            return problem_response(deny), deny.reason
        async with upstream_response:
            reason = upstream_response.reason
            response = web.StreamResponse(
                status=upstream_response.status,
                reason=_scrub(reason, upstream.spellings) if reason else None,
            )
            for key, value in response_headers(upstream_response.headers, upstream.spellings):
                response.headers.add(key, value)
            try:
                await response.prepare(request)
                async for chunk in upstream_response.content.iter_chunked(_CHUNK):
                    await response.write(chunk)
                await response.write_eof()
            except ConnectionResetError:  # the caller went away (aiohttp's is a subclass)
                return response, "client-disconnected"
            except (aiohttp.ClientError, TimeoutError):
                return response, "upstream-body-interrupted"
        return response, None
