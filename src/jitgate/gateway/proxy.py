"""The streaming reverse proxy (aiohttp server and client).

For each call: enforce (:mod:`jitgate.gateway.enforce`), then refuse what only a proxy
must (protocol upgrades, a declared body over the limit, a ``_method`` form field); build
the upstream request from the caller's (:mod:`jitgate.gateway.headers`: the credential
injected last), stream the body up
(:mod:`jitgate.gateway.bodies`: limited and timed) and the answer back, and audit the
outcome. Upstream redirects are passed back, never followed; upstream connections are
pooled; link-local and metadata addresses are refused at connect time
(:mod:`jitgate.gateway.resolver`). Every spelling of the secret is scrubbed from the
answer's reason phrase and headers, and overwritten in its body; a body compressed all
the same is decoded first, or refused if it cannot be (:mod:`jitgate.gateway.bodies`).
``Expect: 100-continue`` is answered here, and only once the call is allowed. A call with
response masks has its JSON answer — declared, or told by its first bytes — read, masked
and scrubbed whole (:mod:`jitgate.gateway.masking`); every other answer streams.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import zlib
from collections.abc import AsyncIterable
from typing import Any

import aiohttp
from aiohttp import HttpVersion11, web
from aiohttp.abc import AbstractResolver
from prometheus_client import Counter
from yarl import URL

from jitgate.audit.events import EventType, NewEvent
from jitgate.audit.writer import AuditSink
from jitgate.clock import Clock, utc
from jitgate.domain.addresses import refused_address
from jitgate.domain.masks import Mask
from jitgate.gateway.bodies import (
    DECODED_DROPPED,
    BodyLimitError,
    Decoder,
    RequestBody,
    Scrubber,
    check_form,
    decoder_for,
    has_body,
    is_form,
    too_large,
)
from jitgate.gateway.enforce import Allow, Deny, Enforcer
from jitgate.gateway.headers import (
    is_upgrade,
    response_headers,
    scrub,
    upstream_headers,
    upstream_query,
)
from jitgate.gateway.masking import (
    MAX_MASK_BODY,
    MaskRefusedError,
    inspect_answer,
    mask_request,
    masked_headers,
    masks_for,
    read_masked,
    resume,
)
from jitgate.gateway.resolver import GuardedResolver, RefusedAddressError
from jitgate.gateway.view import Upstream
from jitgate.problems import PROBLEM_CONTENT_TYPE, problem

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
_literal_refusal = functools.lru_cache(maxsize=256)(refused_address)
DECISIONS = Counter(
    "jitgate_gateway_decisions_total",
    "Gateway decisions by outcome and reason",
    ["outcome", "reason"],
)
ALLOWED = DECISIONS.labels("allowed", "")


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
    response = web.Response(status=deny.status, text=json.dumps(body), headers=headers)
    if deny.status in (408, 413) or deny.reason == "upgrade-refused":
        response.force_close()  # the rest of the caller's bytes will never be read
    return response


def _refused(allow: Allow, status: int, reason: str, detail: str) -> Deny:
    return Deny(status, reason, detail, allow.upstream.api.name, allow.token)


def allowed_event(allow: Allow, method: str, now: float, **data: Any) -> NewEvent:
    """The ``access.allowed`` event of a call (or decision) that ``allow`` admitted."""
    claims = allow.token.claims
    return NewEvent(
        type=EventType.ACCESS_ALLOWED,
        at=utc(now),
        actor=claims.principal,
        principal=claims.principal,
        api=allow.upstream.api.name,
        grant=claims.grant_id,
        data={"method": method, "path": allow.path[:512], "jti": claims.jti, **data},
    )


def denied_event(deny: Deny, method: str, target: str, now: float, **data: Any) -> NewEvent:
    """The ``access.denied`` event of a refused call (or decision); ``target`` is the raw
    request target, with the API prefix (its query is left out)."""
    claims = deny.token.claims if deny.token else None
    return NewEvent(
        type=EventType.ACCESS_DENIED,
        at=utc(now),
        actor=claims.principal if claims else None,
        principal=claims.principal if claims else None,
        api=deny.api,
        grant=claims.grant_id if claims else None,
        data={
            "method": method[:16],
            "target": target.partition("?")[0][:512],
            "status": deny.status,
            "reason": deny.reason,
            "detail": deny.detail,
            **data,
        },
    )


class Proxy:
    def __init__(
        self,
        enforcer: Enforcer,
        audit: AuditSink,
        clock: Clock,
        *,
        connect_timeout: float,
        timeout: float,
        client_timeout: float = 30.0,
        max_body_size: int = 1 << 30,
        max_mask_body: int = MAX_MASK_BODY,
        allow_link_local: bool = False,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.enforcer = enforcer
        self.audit = audit
        self.clock = clock
        self.client_timeout = client_timeout
        self.max_body_size = max_body_size
        self.max_mask_body = max_mask_body
        self._allow_link_local = allow_link_local
        self._resolver = resolver
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_read=timeout
        )
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        resolver = self._resolver or aiohttp.DefaultResolver()
        if not self._allow_link_local:
            resolver = GuardedResolver(resolver)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=512, keepalive_timeout=30, ttl_dns_cache=60, resolver=resolver
            ),
            timeout=self._timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def record(self, event: NewEvent) -> None:
        """Queue an audit event without blocking the event loop; a full queue makes this
        call wait in a worker thread (back-pressure on this request, never loss)."""
        if not self.audit.try_submit(event):
            await asyncio.to_thread(self.audit.submit, event)

    async def record_denial(self, request: web.BaseRequest, deny: Deny, now: float) -> None:
        await self.record(denied_event(deny, request.method, request.raw_path, now))

    async def _admit(
        self, request: web.BaseRequest, allow: Allow
    ) -> Deny | bytes | RequestBody | None:
        """What only a proxy refuses, once the call is allowed; a body that frameworks read
        as a form checked (:func:`jitgate.gateway.bodies.check_form`), and what of it was
        read: the whole body, or its start with the rest to stream."""
        if is_upgrade(request):
            detail = "protocol upgrades (WebSocket, h2c) are not proxied"
            return _refused(allow, 400, "upgrade-refused", detail)
        length = request.content_length
        if length is not None and length > self.max_body_size:
            refused = too_large(self.max_body_size)
            return _refused(allow, refused.status, refused.reason, refused.detail)
        if not is_form(request):
            return None  # streamed unread, by _forward
        await _continue(request)
        try:
            checked = await check_form(request, limit=self.max_body_size, stall=self.client_timeout)
        except BodyLimitError as exc:
            return _refused(allow, exc.status, exc.reason, exc.detail)
        if checked is None:
            return None
        if checked.complete:
            return checked.head
        return RequestBody(
            request.content,
            limit=self.max_body_size,
            stall=self.client_timeout,
            head=checked.head,
            scanner=checked.scanner,
        )

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        now = self.clock.timestamp()
        decision = self.enforcer.decide(request.method, request.raw_path, request.headers, now)
        if isinstance(decision, Allow) and not self.audit.healthy:
            decision = Deny(503, "audit-unavailable", "access cannot be recorded right now; denied")
        form: bytes | RequestBody | None = None
        if isinstance(decision, Allow):
            admitted = await self._admit(request, decision)
            if isinstance(admitted, Deny):
                decision = admitted
            else:
                form = admitted
        if isinstance(decision, Deny):
            DECISIONS.labels("denied", decision.reason).inc()
            await self.record_denial(request, decision, now)
            return problem_response(decision)
        ALLOWED.inc()
        started = time.perf_counter()
        # What the audit says if forwarding raises (e.g. the handler is cancelled).
        status: int = 500
        error: str | None = "internal-error"
        masked: int | None = None  # values masked in the answer; None: not a masked answer
        try:
            response, error, masked = await self._forward(request, decision, form)
            status = response.status
            return response
        finally:  # every forwarded call is audited, however it ended
            await self.record(
                allowed_event(
                    decision,
                    request.method,
                    now,
                    status=status,
                    ms=round((time.perf_counter() - started) * 1000, 2),
                    **({"error": error} if error else {}),
                    **({"masked": masked} if masked is not None else {}),
                )
            )

    async def _forward(
        self, request: web.BaseRequest, allow: Allow, form: bytes | RequestBody | None
    ) -> tuple[web.StreamResponse, str | None, int | None]:
        assert self._session is not None, "Proxy.start() was not awaited"
        upstream = allow.upstream
        masks = masks_for(allow) if upstream.masks or allow.token.masks else ()
        query = upstream_query(allow.query, upstream)
        url = URL(upstream.api.base_url + allow.path + (f"?{query}" if query else ""), encoded=True)
        if not self._allow_link_local and url.host and _literal_refusal(url.host):
            return _failed(502, "upstream-address-refused", "the upstream address is refused")
        body: RequestBody | bytes | None = form
        if form is None and request.body_exists:
            await _continue(request)
            body = RequestBody(request.content, limit=self.max_body_size, stall=self.client_timeout)
        headers = upstream_headers(request.headers, upstream)
        if masks:
            mask_request(headers)
        try:
            upstream_response = await self._session.request(
                request.method, url, headers=headers, data=body, allow_redirects=False
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _upstream_failure(exc, body, upstream.api.name)
        async with upstream_response:
            head = b""  # the first bytes of the body, if read to tell whether to mask it
            if masks:
                masked = await self._masked(request.method, upstream_response, upstream, masks)
                if not isinstance(masked, bytes):
                    return masked
                head = masked
            encoding = upstream_response.headers.get("Content-Encoding", "identity")
            decoder: Decoder | None = None
            if encoding.strip().lower() != "identity" and has_body(
                request.method, upstream_response.status
            ):
                decoder = decoder_for(encoding, upstream_response.status)
                if decoder is None:
                    detail = f"the upstream's {encoding[:40]!r}-encoded answer cannot be scrubbed"
                    return _failed(502, "upstream-encoding-refused", detail)
            return await self._stream(request, upstream_response, upstream, decoder, body, head)

    async def _stream(
        self,
        request: web.BaseRequest,
        upstream_response: aiohttp.ClientResponse,
        upstream: Upstream,
        decoder: Decoder | None,
        body: RequestBody | bytes | None,
        head: bytes = b"",
    ) -> tuple[web.StreamResponse, str | None, None]:
        """The answer streamed back, decoded if ``decoder``, scrubbed of the secret
        (``head``: its first bytes, already read)."""
        reason = upstream_response.reason
        response = web.StreamResponse(
            status=upstream_response.status,
            reason=scrub(reason, upstream.spellings) if reason else None,
        )
        for key, value in response_headers(upstream_response.headers, upstream.spellings):
            if decoder is None or key.lower() not in DECODED_DROPPED:
                response.headers.add(key, value)
        scrubber = Scrubber(upstream.spellings)
        try:
            await response.prepare(request)
            chunks: AsyncIterable[bytes] = (
                resume(head, upstream_response)
                if head
                else upstream_response.content.iter_chunked(_CHUNK)
            )
            async for chunk in chunks:
                for piece in decoder.feed(chunk) if decoder else (chunk,):
                    if out := scrubber.feed(piece):
                        await response.write(out)
            tail = scrubber.feed(decoder.flush()) if decoder else b""
            await response.write_eof(tail + scrubber.flush())
        except ConnectionResetError:  # the caller went away (aiohttp's is a subclass)
            return response, "client-disconnected", None
        except TimeoutError:
            return _cut(request, response, "upstream-body-timeout")
        except aiohttp.ClientError:
            return _cut(request, response, "upstream-body-interrupted")
        except zlib.error:
            return _cut(request, response, "upstream-body-undecodable")
        refused = body.refused if isinstance(body, RequestBody) else None
        return response, refused.reason if refused else None, None

    async def _masked(
        self,
        method: str,
        upstream_response: aiohttp.ClientResponse,
        upstream: Upstream,
        masks: tuple[Mask, ...],
    ) -> tuple[web.StreamResponse, str | None, int | None] | bytes:
        """A masked call's JSON answer read whole, masked and scrubbed; refused (502, 504)
        if it cannot be; or, if the answer is not to be masked, the first bytes of its body
        read to tell (:func:`jitgate.gateway.masking.inspect_answer`), for the streaming path."""
        try:
            to_mask, head = await inspect_answer(method, upstream_response)
            if not to_mask:
                return head
            body, masked = await read_masked(upstream_response, masks, self.max_mask_body, head)
        except MaskRefusedError as exc:
            log.warning("answer of %s not masked: %s", upstream.api.name, exc.reason)
            return _failed(502, exc.reason, exc.detail)
        except TimeoutError:
            return _failed(504, "upstream-body-timeout", "the upstream's answer stalled")
        except aiohttp.ClientError:
            return _failed(502, "upstream-body-interrupted", "the upstream's answer broke off")
        scrubber = Scrubber(upstream.spellings)
        reason = upstream_response.reason
        headers = response_headers(upstream_response.headers, upstream.spellings)
        response = web.Response(
            status=upstream_response.status,
            reason=scrub(reason, upstream.spellings) if reason else None,
            headers=masked_headers(headers, upstream_response),
            body=scrubber.feed(body) + scrubber.flush(),
        )
        return response, None, masked


def _cut(
    request: web.BaseRequest, response: web.StreamResponse, error: str
) -> tuple[web.StreamResponse, str, None]:
    """An answer broken off after it began: the caller's connection is closed before the
    end of the body is marked, so a chunked answer cannot pass for a complete one."""
    if request.transport is not None:
        request.transport.close()
    return response, error, None


def _failed(status: int, reason: str, detail: str) -> tuple[web.StreamResponse, str, None]:
    return problem_response(Deny(status, reason, detail)), reason, None


def _upstream_failure(
    exc: BaseException, body: RequestBody | bytes | None, api: str
) -> tuple[web.StreamResponse, str, None]:
    """The answer when the upstream request failed before its answer's head arrived."""
    refused = body.refused if isinstance(body, RequestBody) else None
    if refused is not None:  # the caller's body broke a limit: the upload was stopped
        return _failed(refused.status, refused.reason, refused.detail)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return _failed(504, "upstream-connect-timeout", "connecting to the upstream timed out")
    if isinstance(exc, TimeoutError):
        return _failed(504, "upstream-timeout", "the upstream did not answer in time")
    refused_address = isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
        exc.os_error, RefusedAddressError
    )
    if refused_address:
        return _failed(502, "upstream-address-refused", "the upstream address is refused")
    log.warning("upstream %s failed: %s", api, type(exc).__name__)
    return _failed(502, "upstream-unreachable", "the upstream could not be reached")
