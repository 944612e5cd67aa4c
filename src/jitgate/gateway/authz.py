"""Decision endpoints: the gateway's checks for proxies that carry the traffic themselves.

``/authz/envoy/{api}/{path…}`` (Envoy ``ext_authz``), ``/authz/nginx`` (nginx
``auth_request``) and ``/authz/forward`` (Traefik ``ForwardAuth``) each recover the
original method and request target, hand them with the caller's headers to the same
:class:`~jitgate.gateway.enforce.Enforcer` as the proxy, and never proxy anything.

Guarantees:

* One decision, one audit event (``access.allowed`` / ``access.denied``, the gateway's
  reason codes, ``data.via`` naming the endpoint), through the proxy's batched sink; an
  allowed decision is refused when that sink cannot persist (fail closed).
* An allow is ``200`` with the header the gateway would inject upstream, and nothing the
  proxy could cache (``Cache-Control: no-store``): revocation holds on the very next call.
  For nginx it also carries ``X-Jitgate-Target``, the exact upstream path and query the
  gateway would request (query-parameter injection included), so that nginx forwards the
  path that was checked rather than its own decoding of it. Envoy and ForwardAuth cannot
  rewrite the query: APIs with query-parameter injection are refused there
  (501 ``injection-unsupported``).
* Envoy sends the caller's body with the check (``with_request_body``): a body that a
  framework would read as a form (urlencoded, untyped, multipart) is checked and a
  ``_method`` field refused exactly as by the proxy (:mod:`jitgate.gateway.bodies`: 400
  ``method-override``; 413 ``body-too-large`` for an urlencoded form over its limit, or
  when Envoy sent only part of the body). nginx's and Traefik's checks carry no body: a
  ``_method`` form field passes them unseen (see docs/integrations/README.md for the
  mitigations).
* A denial is the gateway's problem answer. nginx's ``auth_request`` only tells 401 and
  403 from an error, so the nginx endpoint answers 401 or 403 and carries the gateway's
  status and problem in ``X-Jitgate-Status`` / ``X-Jitgate-Problem`` for nginx to relay.
* These answers hold upstream secrets: they are served only when enabled, and only to
  callers within ``gateway.decisions.allow_from``; the paths are never proxied (an API
  cannot be named ``authz``). No secret goes to a log or an audit event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address

from aiohttp import web

from jitgate.gateway.bodies import BodyLimitError, RequestBody, check_form, is_form
from jitgate.gateway.enforce import Allow, Deny
from jitgate.gateway.headers import upstream_query
from jitgate.gateway.proxy import (
    ALLOWED,
    DECISIONS,
    Proxy,
    allowed_event,
    denied_event,
    problem_response,
)
from jitgate.problems import problem

log = logging.getLogger(__name__)

PREFIX = "/authz"
ENVOY_PREFIX = "/authz/envoy"
DISABLED = Deny(404, "not-found", "no such endpoint on this gateway")
TARGET_HEADER = "X-Jitgate-Target"
STATUS_HEADER = "X-Jitgate-Status"
PROBLEM_HEADER = "X-Jitgate-Problem"
ENVOY_REMOVE_HEADER = "x-envoy-auth-headers-to-remove"
# Set by Envoy when it buffered the body for the check: "true" if it cut the body short.
ENVOY_PARTIAL_HEADER = "x-envoy-auth-partial-body"
MAX_PEERS = 4096  # peer addresses whose allow_from answer is remembered


class Via(StrEnum):
    ENVOY = "envoy"
    NGINX = "nginx"
    FORWARD = "forward"


# Where nginx and ForwardAuth put the original method and request target.
_ORIGIN_HEADERS = {
    Via.NGINX: ("X-Original-Method", "X-Original-URI"),
    Via.FORWARD: ("X-Forwarded-Method", "X-Forwarded-Uri"),
}


def is_decision_path(raw_path: str) -> bool:
    """Whether a request target belongs to the decision endpoints (first segment ``authz``)."""
    return raw_path == PREFIX or raw_path.startswith((PREFIX + "/", PREFIX + "?"))


def _via(raw_path: str) -> Via | None:
    path = raw_path.partition("?")[0]
    if path == ENVOY_PREFIX or path.startswith(ENVOY_PREFIX + "/"):
        return Via.ENVOY
    if path == "/authz/nginx":
        return Via.NGINX
    if path == "/authz/forward":
        return Via.FORWARD
    return None


def _original(request: web.BaseRequest, via: Via) -> tuple[str, str] | Deny:
    """The original method and raw request target, as the proxy reported them."""
    if via is Via.ENVOY:
        return request.method, request.raw_path[len(ENVOY_PREFIX) :]
    found: list[str] = []
    for name in _ORIGIN_HEADERS[via]:
        values = request.headers.getall(name, [])
        if len(values) != 1:
            return Deny(
                400,
                "original-request-unknown",
                f"the proxy must send exactly one {name} header",
            )
        found.append(values[0])
    return found[0], found[1]


class DecisionEndpoints:
    """The three decision endpoints over one proxy's enforcer, audit sink and clock."""

    def __init__(self, proxy: Proxy, *, allow_from: Iterable[IPv4Network | IPv6Network]) -> None:
        self.proxy = proxy
        self.allow_from = tuple(allow_from)
        self._peers: dict[str, bool] = {}  # the answer by peer address, for the hot path

    def caller_allowed(self, request: web.BaseRequest) -> bool:
        remote = request.remote or ""
        allowed = self._peers.get(remote)
        if allowed is None:
            allowed = self._allowed(remote)
            if len(self._peers) >= MAX_PEERS:
                self._peers.clear()
            self._peers[remote] = allowed
        return allowed

    def _allowed(self, remote: str) -> bool:
        try:
            peer = ip_address(remote)
        except ValueError:  # a Unix socket or an unknown peer: not an allowed proxy
            return False
        if isinstance(peer, IPv6Address) and peer.ipv4_mapped is not None:
            peer = peer.ipv4_mapped  # a dual-stack listener's IPv4 caller
        return any(peer in net for net in self.allow_from)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        via = _via(request.raw_path)
        if via is None or not self.caller_allowed(request):
            if via is not None:
                log.warning("decision endpoint refused to %s: not in allow_from", request.remote)
            return problem_response(DISABLED)
        now = self.proxy.clock.timestamp()
        original = _original(request, via)
        if isinstance(original, Deny):
            return await self._deny(via, "", "", original, now)
        method, target = original
        decision = self.proxy.enforcer.decide(method, target, request.headers, now)
        if isinstance(decision, Allow):
            if not self.proxy.audit.healthy:
                decision = Deny(
                    503, "audit-unavailable", "access cannot be recorded right now; denied"
                )
            elif via is not Via.NGINX and decision.upstream.query_name is not None:
                decision = Deny(
                    501,
                    "injection-unsupported",
                    f"API {decision.upstream.api.name!r} takes its credential as a query "
                    f"parameter, which {via} cannot add; use the gateway or nginx",
                    decision.upstream.api.name,
                    decision.token,
                )
            elif via is Via.ENVOY:
                decision = await self._envoy_body(request, decision)
        if isinstance(decision, Deny):
            return await self._deny(via, method, target, decision, now)
        ALLOWED.inc()
        await self.proxy.record(allowed_event(decision, method, now, via=str(via)))
        return _allow_response(via, decision)

    async def _envoy_body(self, request: web.BaseRequest, allow: Allow) -> Allow | Deny:
        """The caller's body, which Envoy sent with the check, judged as the proxy judges it
        once a call is allowed (:func:`jitgate.gateway.bodies.check_form`); the rest of a
        large multipart body is scanned too, since Envoy holds it all."""
        if not is_form(request):
            return allow
        api, token = allow.upstream.api.name, allow.token
        if request.headers.get(ENVOY_PARTIAL_HEADER, "").lower() == "true":
            detail = "only part of the form body was sent to be checked; it cannot be allowed"
            return Deny(413, "body-too-large", detail, api, token)
        limit, stall = self.proxy.max_body_size, self.proxy.client_timeout
        try:
            checked = await check_form(request, limit=limit, stall=stall)
            if checked is not None and checked.scanner is not None:
                rest = RequestBody(
                    request.content,
                    limit=limit - len(checked.head),
                    stall=stall,
                    scanner=checked.scanner,
                )
                async for _ in rest:
                    pass
        except BodyLimitError as exc:
            return Deny(exc.status, exc.reason, exc.detail, api, token)
        return allow

    async def _deny(
        self, via: Via, method: str, target: str, deny: Deny, now: float
    ) -> web.Response:
        DECISIONS.labels("denied", deny.reason).inc()
        await self.proxy.record(denied_event(deny, method, target, now, via=str(via)))
        response = problem_response(deny)
        if via is Via.NGINX:
            response.set_status(401 if deny.status == 401 else 403)
            response.headers[STATUS_HEADER] = str(deny.status)
            response.headers[PROBLEM_HEADER] = json.dumps(
                problem(deny.status, deny.reason, deny.detail)
            )
        return response


def _allow_response(via: Via, allow: Allow) -> web.Response:
    upstream = allow.upstream
    response = web.Response(status=200, headers={"Cache-Control": "no-store"})
    if upstream.header_name:
        response.headers[upstream.header_name] = upstream.header_value
    if via is Via.NGINX:
        query = upstream_query(allow.query, upstream)
        response.headers[TARGET_HEADER] = allow.path + (f"?{query}" if query else "")
    elif via is Via.ENVOY and upstream.header_name != "authorization":
        # ext_authz only sets headers; the caller's grant token must not go upstream.
        response.headers[ENVOY_REMOVE_HEADER] = "authorization"
    return response
