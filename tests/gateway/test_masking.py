"""Response masking: JSON answers of masked APIs and grants, through the real gateway.

A small upstream on loopback answers what each test puts in its table (status, media
type, body), reflecting the credential it received so that secret scrubbing is checked
on masked bodies too (the harness checks every reply for every spelling of the secret).
JSON is masked whatever media type it is sent as (told by its first bytes); what does not
start like JSON streams byte for byte, in bounded memory; what starts like JSON but is not
is refused.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from jitgate.audit.events import EventType
from jitgate.domain.masks import MASK, apply_masks, parse_mask, parse_masks
from jitgate.domain.models import Api, Injection, InjectionKind
from jitgate.errors import ConfigError, InvalidInput
from jitgate.gateway.app import create_gateway_server
from jitgate.gateway.masking import SNIFF_LIMIT
from jitgate.gateway.proxy import Proxy
from jitgate.policy import parse_policy
from jitgate.secrets import Secret
from jitgate.services import audit, directory
from jitgate.storage.audit_repo import AuditFilter
from tests.gateway.conftest import Harness, serve

pytestmark = pytest.mark.anyio

API_MASKS = ("$.card.number", "$.items[*].ssn", "$..note")
KEY = "mk_masking_key_0123456789"
CARD = {"card": {"number": "4111111111111111", "exp": "12/30"}, "name": "Ada"}


BIG_LINE = b"[INFO] a line of a large download that is not JSON\n"
BIG_FIRST = 1 << 20  # bytes the upstream sends before it waits for the caller
BIG_SIZE = 5 << 20


class _Untyped(web.Response):
    """An answer with no ``Content-Type`` at all (aiohttp would add one)."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self.headers.popall("Content-Type", None)


def big_body() -> bytes:
    return (BIG_LINE * (BIG_SIZE // len(BIG_LINE) + 1))[:BIG_SIZE]


@dataclass
class Answer:
    body: bytes
    content_type: str | None = "application/json"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


class TableUpstream:
    """Answers ``/{name}`` from :attr:`answers`; ``{key}`` in a body becomes the credential
    it received (so a leak would show); a few names misbehave on purpose."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.seen: list[CIMultiDict[str]] = []
        self.release = asyncio.Event()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.seen.append(CIMultiDict(request.headers))
        name = request.path.rsplit("/", 1)[-1]
        received = request.headers.get("X-Api-Key", "")
        if name == "gzip-if-asked" or name == "gzip-always":
            data = json.dumps(CARD).encode()
            if name == "gzip-always" or "gzip" in request.headers.get("Accept-Encoding", ""):
                return web.Response(
                    body=gzip.compress(data),
                    headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
                )
            return web.Response(body=data, content_type="application/json")
        if name == "big-text":  # 5 MiB; the rest only once the caller got the first MiB
            body = big_body()
            response = web.StreamResponse(headers={"Content-Type": "text/plain"})
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body[:BIG_FIRST])
            await self.release.wait()
            for at in range(BIG_FIRST, len(body), 256 * 1024):
                await response.write(body[at : at + 256 * 1024])
            await response.write_eof()
            return response
        if name == "stall-blank" or name == "long-blank":  # whitespace, then it waits
            response = web.StreamResponse(headers={"Content-Type": "text/plain"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(b" \n" if name == "stall-blank" else b" " * (SNIFF_LIMIT + 10))
            await self.release.wait()
            await response.write_eof(b"hello")
            return response
        if name == "chunked-big" or name == "slow-text":
            kind = "application/json" if name == "chunked-big" else "text/plain"
            response = web.StreamResponse(headers={"Content-Type": kind})
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(b'{"pad": "' if name == "chunked-big" else b"first chunk;")
            if name == "slow-text":
                await self.release.wait()  # the gateway must forward what came so far
                await response.write(b"second chunk")
            else:
                for _ in range(4):
                    await response.write(b"x" * 1024)
                await response.write(b'"}')
            await response.write_eof()
            return response
        answer = self.answers[name]
        headers = {**answer.headers}
        if answer.content_type is not None:
            headers["Content-Type"] = answer.content_type
        kind = web.Response if answer.content_type is not None else _Untyped
        return kind(
            status=answer.status,
            body=answer.body.replace(b"{key}", received.encode()),
            headers=headers,
        )


@pytest.fixture
async def up(gw: Harness) -> TableUpstream:
    """APIs ``masked`` (with :data:`API_MASKS`) and ``plain`` (none) on one upstream."""
    upstream = TableUpstream()
    runner, port = await serve(web.Server(upstream.handle))
    gw.cleanups.append(runner)
    injection = Injection(InjectionKind.HEADER, "X-Api-Key", "{secret}")
    base = f"http://127.0.0.1:{port}"
    for name, masks in (("masked", API_MASKS), ("plain", ())):
        api = Api(name, f"{base}/{name}", injection, "dev", masks=masks)
        directory.add_api(gw.ctx, None, api, Secret(f"{KEY}_{name}"))
        gw.secrets[name] = f"{KEY}_{name}"
    return upstream


def allowed(gw: Harness) -> dict[str, Any]:
    event = gw.events(EventType.ACCESS_ALLOWED)[-1]
    return event.data


# masked answers: (name, answer, expected JSON, how many masked) ---------------------------

NUMBER = {"card": {"number": MASK}}
MASKED_CARD = {**CARD, "card": {**CARD["card"], "number": MASK}}
ONE = b'{"card": {"number": "1"}}'
UTF8 = "application/json; charset=utf-8"
ECHOED = {"card": {"number": MASK}, "debug": "got " + "*" * len(KEY + "_masked")}
MASKED = [
    ("nested", Answer(json.dumps(CARD).encode()), MASKED_CARD, 1),
    (
        "array-wildcard",
        Answer(b'{"items": [{"ssn": "1", "n": 1}, {"ssn": 2}, {"n": 3}]}'),
        {"items": [{"ssn": MASK, "n": 1}, {"ssn": MASK}, {"n": 3}]},
        2,
    ),
    ("missing-paths", Answer(b'{"other": [1, 2]}'), {"other": [1, 2]}, 0),
    ("number-value", Answer(b'{"card": {"number": 4111111111111111}}'), NUMBER, 1),
    ("object-value", Answer(b'{"card": {"number": {"a": [1]}}}'), NUMBER, 1),
    (
        "descendant",
        Answer(b'{"a": {"b": [{"note": "x"}]}, "note": null}'),
        {"a": {"b": [{"note": MASK}]}, "note": MASK},
        2,
    ),
    ("top-level-array", Answer(b'[{"card": {"number": "1"}}]'), [{"card": {"number": "1"}}], 0),
    ("scalar-document", Answer(b'"4111111111111111"'), "4111111111111111", 0),
    (
        "charset-utf8",
        Answer('{"card": {"number": "1"}, "n": "é"}'.encode(), UTF8),
        {**NUMBER, "n": "é"},
        1,
    ),
    ("upper-case-type", Answer(ONE, "Application/JSON"), NUMBER, 1),
    ("problem+json", Answer(ONE, "application/problem+json", 400), NUMBER, 1),
    ("vnd+json", Answer(ONE, "application/vnd.api+json; ext=x"), NUMBER, 1),
    ("secret-echoed", Answer(b'{"card": {"number": "1"}, "debug": "got {key}"}'), ECHOED, 1),
]


@pytest.mark.parametrize(
    ("name", "answer", "expected", "count"), MASKED, ids=[m[0] for m in MASKED]
)
async def test_json_answers_are_masked(
    gw: Harness, up: TableUpstream, name: str, answer: Answer, expected: Any, count: int
) -> None:
    up.answers[name] = answer
    token = gw.issue(["* /**"], api="masked").token
    reply = await gw.call("GET", f"/masked/{name}", token)
    assert reply.status == answer.status, reply.body
    assert reply.json() == expected
    assert int(reply.headers["Content-Length"]) == len(reply.body)
    assert allowed(gw)["masked"] == count
    assert "4111111111111111" not in json.dumps(allowed(gw))  # never the values


async def test_a_foreign_charset_is_decoded_and_answered_as_utf8(
    gw: Harness, up: TableUpstream
) -> None:
    body = '{"card": {"number": "1"}, "city": "Köln"}'.encode("latin-1")
    up.answers["latin"] = Answer(body, "application/json; charset=ISO-8859-1")
    reply = await gw.call("GET", "/masked/latin", gw.issue(api="masked").token)
    assert reply.headers["Content-Type"] == "application/json; charset=utf-8"
    assert reply.json() == {"card": {"number": MASK}, "city": "Köln"}


# JSON under another media type: told by its first bytes, masked --------------------------

CARD_BYTES = json.dumps(CARD).encode()
MASKED_BYTES = json.dumps(MASKED_CARD, separators=(",", ":")).encode()
NOTE = b'[{"note": "x", "n": 1}]'
MASKED_NOTE = b'[{"note":"****","n":1}]'
ANGULAR = b")]}',\n"
SNIFFED = [
    # (name, answer, the exact body expected, how many masked)
    ("text-plain", Answer(CARD_BYTES, "text/plain"), MASKED_BYTES, 1),
    ("text-html", Answer(CARD_BYTES, "text/html; charset=utf-8"), MASKED_BYTES, 1),
    ("text-json", Answer(CARD_BYTES, "text/json"), MASKED_BYTES, 1),
    ("json-lookalike", Answer(CARD_BYTES, "application/jsonx"), MASKED_BYTES, 1),
    ("octet-stream", Answer(CARD_BYTES, "application/octet-stream"), MASKED_BYTES, 1),
    ("javascript", Answer(CARD_BYTES, "application/javascript"), MASKED_BYTES, 1),
    ("no-content-type", Answer(CARD_BYTES, None), MASKED_BYTES, 1),
    ("error-page", Answer(CARD_BYTES, "text/html", 500), MASKED_BYTES, 1),
    ("bom", Answer(b"\xef\xbb\xbf" + CARD_BYTES, "text/plain"), MASKED_BYTES, 1),
    (
        "bom-utf8",
        Answer(b"\xef\xbb\xbf" + CARD_BYTES, "text/plain; charset=utf-8"),
        MASKED_BYTES,
        1,
    ),
    ("whitespace", Answer(b" \r\n\t\n " + CARD_BYTES + b"\n", "text/plain"), MASKED_BYTES, 1),
    ("array", Answer(NOTE, "text/plain"), MASKED_NOTE, 1),
    ("array-spaced", Answer(b"[\n  " + NOTE[1:], "text/plain"), MASKED_NOTE, 1),
    ("utf16", Answer(json.dumps(CARD).encode("utf-16"), "text/plain"), MASKED_BYTES, 1),
    ("utf16le-no-bom", Answer(json.dumps(CARD).encode("utf-16-le"), None), MASKED_BYTES, 1),
    ("xssi-angular", Answer(ANGULAR + CARD_BYTES, "text/plain"), ANGULAR + MASKED_BYTES, 1),
    ("xssi-google", Answer(b")]}'\n" + CARD_BYTES, "text/html"), b")]}'\n" + MASKED_BYTES, 1),
    ("xssi-declared", Answer(ANGULAR + CARD_BYTES), ANGULAR + MASKED_BYTES, 1),
    ("for-loop", Answer(b"for (;;);" + NOTE, "text/javascript"), b"for (;;);" + MASKED_NOTE, 1),
    ("while-1", Answer(b"while(1);\n" + CARD_BYTES, None), b"while(1);\n" + MASKED_BYTES, 1),
    ("bom-declared-json", Answer(b"\xef\xbb\xbf" + CARD_BYTES, UTF8), MASKED_BYTES, 1),
    (
        "secret-echoed",
        Answer(b'{"card": {"number": "1"}, "debug": "got {key}"}', "text/plain"),
        json.dumps(ECHOED, separators=(",", ":")).encode(),
        1,
    ),
]


@pytest.mark.parametrize(
    ("name", "answer", "expected", "count"), SNIFFED, ids=[m[0] for m in SNIFFED]
)
async def test_json_under_another_media_type_is_masked(
    gw: Harness, up: TableUpstream, name: str, answer: Answer, expected: bytes, count: int
) -> None:
    up.answers[name] = answer
    reply = await gw.call("GET", f"/masked/{name}", gw.issue(api="masked").token)
    assert reply.status == answer.status, reply.body
    assert reply.body == expected
    assert b"4111" not in reply.body
    assert int(reply.headers["Content-Length"]) == len(reply.body)
    # the declared type is kept (aiohttp labels an untyped body application/octet-stream)
    declared = answer.content_type or "application/octet-stream"
    assert reply.headers["Content-Type"] == declared
    data = allowed(gw)
    assert (data["status"], data["masked"]) == (answer.status, count)
    assert "error" not in data


async def test_a_sniffed_answer_in_a_foreign_charset_is_answered_as_utf8(
    gw: Harness, up: TableUpstream
) -> None:
    body = '{"card": {"number": "1"}, "city": "Köln"}'.encode("latin-1")
    up.answers["latin-text"] = Answer(body, "text/plain; charset=ISO-8859-1")
    reply = await gw.call("GET", "/masked/latin-text", gw.issue(api="masked").token)
    assert reply.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert reply.json() == {"card": {"number": MASK}, "city": "Köln"}
    assert allowed(gw)["masked"] == 1


# what does not start like JSON streams, byte for byte -----------------------------------

UNTOUCHED = [
    ("octets", Answer(b"\x00\x01 card.number", "application/octet-stream")),
    ("log-line", Answer(b'[INFO] {"card": {"number": "4111"}}\n', "text/plain")),
    ("ini", Answer(b"[section]\nnumber = 4111\n", "text/plain")),
    ("html", Answer(b'\n\n  <!doctype html><pre>{"card": 1}</pre>', "text/html")),
    ("csv", Answer(b"number,exp\n4111,12/30\n", "text/csv")),
    ("xssi-then-text", Answer(b")]}'\nnot json", "text/plain")),
    ("for-word", Answer(b"for real: {}", "text/plain")),
    ("whitespace-only", Answer(b"  \r\n\t ", "text/plain")),
    ("empty", Answer(b"", "text/plain")),
    ("empty-no-type", Answer(b"", None, 201)),
    ("untyped-text", Answer(b"created", None, 201)),
    ("scalar", Answer(b'"4111111111111111"', "text/plain")),  # masks select in containers
    ("jsonp-not-covered", Answer(b'cb({"card": {"number": "4111"}});', "text/javascript")),
    ("utf16-text", Answer("plain words".encode("utf-16"), "text/plain; charset=utf-16")),
    ("no-content", Answer(b"", "application/json", 204)),
    ("not-modified", Answer(b"", "text/plain", 304)),
]


@pytest.mark.parametrize(("name", "answer"), UNTOUCHED, ids=[u[0] for u in UNTOUCHED])
async def test_other_answers_pass_untouched(
    gw: Harness, up: TableUpstream, name: str, answer: Answer
) -> None:
    up.answers[name] = answer
    reply = await gw.call("GET", f"/masked/{name}", gw.issue(api="masked").token)
    assert reply.status == answer.status
    assert reply.body == answer.body
    data = allowed(gw)
    assert data["status"] == answer.status
    assert "masked" not in data
    assert "error" not in data


@pytest.mark.parametrize("kind", ["application/json", "text/plain", None])
async def test_head_is_not_masked(gw: Harness, up: TableUpstream, kind: str | None) -> None:
    up.answers["head"] = Answer(CARD_BYTES, kind)
    reply = await gw.call("HEAD", "/masked/head", gw.issue(api="masked").token)
    assert reply.status == 200
    assert reply.body == b""
    assert reply.headers["Content-Length"] == str(len(CARD_BYTES))
    data = allowed(gw)
    assert data["status"] == 200
    assert "masked" not in data


async def test_a_compressed_answer_that_is_not_json_streams_decoded(
    gw: Harness, up: TableUpstream
) -> None:
    text = b"[INFO] plain text, compressed all the same " * 100
    headers = {"Content-Encoding": "gzip"}
    up.answers["gzip-text"] = Answer(gzip.compress(text), "text/plain", headers=headers)
    reply = await gw.call("GET", "/masked/gzip-text", gw.issue(api="masked").token)
    assert reply.status == 200
    assert reply.body == text
    assert "Content-Encoding" not in reply.headers
    assert "masked" not in allowed(gw)


async def test_a_large_download_streams_without_being_held(gw: Harness, up: TableUpstream) -> None:
    """5 MiB of text that starts with "[": the first MiB reaches the caller while the
    upstream still holds the rest, and every byte arrives in order."""
    gw.proxy.max_mask_body = 4096  # no limit of masking applies to it
    token = gw.issue(api="masked").token
    async with gw.session.get(
        gw.url("/masked/big-text"), headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 200
        received = bytearray()
        while len(received) < BIG_FIRST:
            chunk = await asyncio.wait_for(response.content.readany(), timeout=5)
            assert chunk, "the answer ended early"
            received += chunk
        up.release.set()
        received += await asyncio.wait_for(response.content.read(), timeout=10)
    assert len(received) == BIG_SIZE
    assert received == big_body()
    data = allowed(gw)
    assert data["status"] == 200
    assert "masked" not in data
    assert "error" not in data


async def test_other_content_types_stream_without_buffering(gw: Harness, up: TableUpstream) -> None:
    token = gw.issue(api="masked").token
    async with gw.session.get(
        gw.url("/masked/slow-text"), headers={"Authorization": f"Bearer {token}"}
    ) as response:
        first = await asyncio.wait_for(response.content.readany(), timeout=5)
        assert first == b"first chunk;"  # arrived while the upstream still holds the rest
        up.release.set()
        assert await response.content.read() == b"second chunk"


REFUSED = [
    ("invalid", Answer(b'{"card": {"number": "1"'), "response-not-json"),
    ("nan", Answer(b'{"card": {"number": NaN}}'), "response-not-json"),
    ("huge-float", Answer(b'{"n": 1e400}'), "response-not-json"),
    ("empty", Answer(b""), "response-not-json"),
    ("bad-utf8", Answer(b'{"n": "\xff"}', "application/json; charset=utf-8"), "response-not-json"),
    ("bad-charset", Answer(b"{}", "application/json; charset=klingon"), "response-not-json"),
    ("deep", Answer(b"[" * 1500 + b"]" * 1500), "response-not-json"),
    ("deep-descendant", Answer(b'{"a":' * 150 + b"1" + b"}" * 150), "response-not-json"),
    ("partial", Answer(b'"4111111111111111"', status=206), "response-not-json"),
    ("too-large", Answer(b'{"pad": "' + b"x" * 5000 + b'"}'), "response-too-large-to-mask"),
    ("chunked-big", Answer(b""), "response-too-large-to-mask"),
    ("gzip-always", Answer(b""), "response-not-json"),
    # not declared JSON, but starting like it: masked or refused, never streamed
    ("broken-text", Answer(b'{"card": {"number": "4111"', "text/plain"), "response-not-json"),
    ("python-repr", Answer(b"{'card': {'number': '4111'}}", "text/plain"), "response-not-json"),
    ("nan-text", Answer(b'{"card": {"number": "4111"}, "n": NaN}', None), "response-not-json"),
    (
        "json-lines",
        Answer(b'{"card": {"number": "4111"}}\n{"n": 1}\n', "application/x-ndjson"),
        "response-not-json",
    ),
    ("lone-bracket", Answer(b"[", "text/plain"), "response-not-json"),
    ("array-broken", Answer(b'[{"card": {"number": "4111"}}', "text/html"), "response-not-json"),
    ("xssi-broken", Answer(b')]}\',\n{"card": 4111', "text/plain"), "response-not-json"),
    ("partial-octets", Answer(b"4111111111111111", "text/plain", 206), "response-not-json"),
    (
        "gzip-text-json",
        Answer(gzip.compress(CARD_BYTES), "text/plain", headers={"Content-Encoding": "gzip"}),
        "response-not-json",
    ),
    (
        "gzip-corrupt",
        Answer(b"\x1f\x8b\x08\x00 not gzip at all", None, headers={"Content-Encoding": "gzip"}),
        "response-not-json",
    ),
    (  # a coding the gateway cannot undo is refused as on any call
        "br-text",
        Answer(b"{}", "text/plain", headers={"Content-Encoding": "br"}),
        "upstream-encoding-refused",
    ),
    (
        "too-large-text",
        Answer(b'{"pad": "' + b"x" * 5000 + b'"}', "text/plain"),
        "response-too-large-to-mask",
    ),
]


@pytest.mark.parametrize(("name", "answer", "code"), REFUSED, ids=[r[0] for r in REFUSED])
async def test_answers_that_cannot_be_masked_fail_closed(
    gw: Harness, up: TableUpstream, name: str, answer: Answer, code: str
) -> None:
    up.answers[name] = answer
    gw.proxy.max_mask_body = 4096
    reply = await gw.call("GET", f"/masked/{name}", gw.issue(api="masked").token)
    assert reply.status == 502, reply.body
    assert reply.code == code
    assert b"4111" not in reply.body
    data = allowed(gw)
    assert (data["status"], data["error"]) == (502, code)
    assert "masked" not in data


async def test_an_answer_undecided_for_the_sniff_limit_is_taken_as_json(
    gw: Harness, up: TableUpstream
) -> None:
    """More than SNIFF_LIMIT bytes of whitespace, then the upstream waits: the gateway
    does not wait to see what follows; it fails closed (here: too large to mask)."""
    gw.proxy.max_mask_body = 4096
    reply = await gw.call("GET", "/masked/long-blank", gw.issue(api="masked").token)
    up.release.set()
    assert (reply.status, reply.code) == (502, "response-too-large-to-mask")
    data = allowed(gw)
    assert (data["status"], data["error"]) == (502, "response-too-large-to-mask")
    assert "masked" not in data


@contextlib.asynccontextmanager
async def impatient_gateway(gw: Harness, stall: float) -> AsyncIterator[int]:
    """A second gateway on the same view and audit sink, whose upstream reads time out
    after ``stall`` seconds."""
    proxy = Proxy(gw.enforcer, gw.sink, gw.clock, connect_timeout=2.0, timeout=stall)
    await proxy.start()
    runner, port = await serve(create_gateway_server(proxy))
    try:
        yield port
    finally:
        await runner.cleanup()
        await proxy.close()


async def test_an_answer_that_stalls_before_it_tells_is_a_504(
    gw: Harness, up: TableUpstream
) -> None:
    token = gw.issue(api="masked").token
    async with impatient_gateway(gw, 0.3) as port:
        url = f"http://127.0.0.1:{port}/masked/stall-blank"
        headers = {"Authorization": f"Bearer {token}"}
        async with gw.session.get(url, headers=headers) as response:
            assert response.status == 504
            body = await response.json()
        up.release.set()
    assert body["code"] == "upstream-body-timeout"
    data = allowed(gw)
    assert (data["status"], data["error"]) == (504, "upstream-body-timeout")
    assert "masked" not in data


async def test_masked_calls_ask_for_identity_and_whole_answers(
    gw: Harness, up: TableUpstream
) -> None:
    token = gw.issue(api="masked").token
    sent = {"Accept-Encoding": "gzip, br", "Range": "bytes=10-30", "If-Range": '"x"'}
    reply = await gw.call("GET", "/masked/gzip-if-asked", token, headers=sent)
    assert reply.json()["card"]["number"] == MASK
    assert "Content-Encoding" not in reply.headers
    seen = up.seen[-1]
    assert seen["Accept-Encoding"] == "identity"
    assert "Range" not in seen
    assert "If-Range" not in seen


async def test_calls_without_masks_keep_the_streaming_path(gw: Harness, up: TableUpstream) -> None:
    token = gw.issue(api="plain").token
    reply = await gw.call("GET", "/plain/gzip-if-asked", token, headers={"Accept-Encoding": "gzip"})
    assert up.seen[-1]["Accept-Encoding"] == "identity"  # the gateway must see the bytes
    assert "Content-Encoding" not in reply.headers
    assert reply.json() == CARD
    assert "masked" not in allowed(gw)
    up.answers["card"] = Answer(json.dumps(CARD).encode(), headers={"ETag": '"v1"'})
    reply = await gw.call("GET", "/plain/card", token)
    assert reply.json() == CARD
    assert reply.headers["ETag"] == '"v1"'


async def test_validators_and_digests_of_the_unmasked_body_are_dropped(
    gw: Harness, up: TableUpstream
) -> None:
    headers = {"ETag": '"v1"', "Content-MD5": "abc", "Digest": "sha-256=x", "X-Kept": "1"}
    up.answers["card"] = Answer(json.dumps(CARD).encode(), headers=headers)
    reply = await gw.call("GET", "/masked/card", gw.issue(api="masked").token)
    assert reply.json()["card"]["number"] == MASK
    for name in ("ETag", "Content-MD5", "Digest"):
        assert name not in reply.headers
    assert reply.headers["X-Kept"] == "1"


# grant masks from the policy ------------------------------------------------------------

POLICY = """\
version: 1
rules:
  - name: masked-reads
    requesters: {groups: [engineering]}
    apis: [masked, plain]
    scopes: ["GET /masked-by-rule/**"]
    approval: auto
    mask: ["$.name", "$.card.number"]
  - name: rest
    requesters: {groups: [engineering]}
    apis: ["*"]
    scopes: ["* /**"]
    approval: auto
"""


@pytest.fixture
def ruled(gw: Harness, up: TableUpstream) -> Harness:
    gw.ctx.replace_policy(parse_policy(POLICY, "masks.yaml"))
    up.answers["masked-by-rule"] = Answer(json.dumps(CARD).encode())
    return gw


def payload(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


GRANT_CASES = [
    # (api, masked fields, count): the grant's masks, united with the API's
    ("plain", {"name": MASK, "card": {**CARD["card"], "number": MASK}}, 2),
    ("masked", {"name": MASK, "card": {**CARD["card"], "number": MASK}}, 2),
]


@pytest.mark.parametrize(("api", "expected", "count"), GRANT_CASES, ids=["plain", "masked"])
async def test_grant_masks_from_the_policy_add_to_the_apis(
    ruled: Harness, api: str, expected: dict[str, Any], count: int
) -> None:
    issued = ruled.issue(["GET /masked-by-rule/**"], api=api)
    assert issued.grant.masks == ("$.name", "$.card.number")
    assert payload(issued.token)["msk"] == ["$.name", "$.card.number"]
    reply = await ruled.call("GET", f"/{api}/masked-by-rule", issued.token)
    assert reply.json() == expected
    assert allowed(ruled)["masked"] == count
    found = audit.query(
        ruled.ctx, ruled.root, AuditFilter(type="grant.issued"), after=0, before=None, limit=100
    )
    assert found[-1].data["masks"] == ["$.name", "$.card.number"]


async def test_a_grant_without_masks_still_gets_the_apis(ruled: Harness) -> None:
    issued = ruled.issue(["GET /**"], api="masked")  # the "rest" rule: no masks
    assert "msk" not in payload(issued.token)
    reply = await ruled.call("GET", "/masked/masked-by-rule", issued.token)
    assert reply.json() == {**CARD, "card": {**CARD["card"], "number": MASK}}


async def test_a_forged_msk_claim_is_refused(ruled: Harness, up: TableUpstream) -> None:
    token = ruled.issue(["GET /masked-by-rule/**"], api="plain").token
    header, _, signature = token.split(".")
    claims = payload(token)
    del claims["msk"]
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    hits = len(up.seen)
    reply = await ruled.call("GET", "/plain/masked-by-rule", f"{header}.{forged_body}.{signature}")
    assert reply.status == 401
    assert reply.code == "token-signature"
    assert len(up.seen) == hits


async def test_api_masks_changed_are_in_force_on_the_next_call(
    gw: Harness, up: TableUpstream
) -> None:
    up.answers["card"] = Answer(json.dumps(CARD).encode())
    token = gw.issue(api="plain").token
    assert (await gw.call("GET", "/plain/card", token)).json() == CARD
    directory.set_masks(gw.ctx, gw.root, "plain", ("$.name",))
    assert (await gw.call("GET", "/plain/card", token)).json()["name"] == MASK
    directory.set_masks(gw.ctx, gw.root, "plain", ())
    assert (await gw.call("GET", "/plain/card", token)).json() == CARD


# declaring masks ---------------------------------------------------------------------------

BAD_MASKS = [
    ("card.number", "expected 'TOKEN_ROOT'"),
    ("$", "must select object members or array items"),
    ("$[?@.n > 1]", "no filters"),
    ("$.a[?match(@.b, 'x')]", "no filters"),
    (" $.a", "whitespace"),
    ("$.a | $.b", "unexpected token"),
    ("$.a~", "unexpected token"),
    ("$." + "a" * 300, "longer than 256"),
    ("", "a mask is a JSONPath"),
]


@pytest.mark.parametrize(
    ("text", "problem"), BAD_MASKS, ids=[b[0][:20] or "empty" for b in BAD_MASKS]
)
def test_bad_masks_are_refused_with_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_mask(text)
    assert problem in caught.value.detail


def test_good_masks_and_their_effect() -> None:
    masks = parse_masks(["$.a", "$['b c'][0]", "$.l[-1]", "$.l[0:1]", "$.*.x", "$..y", "$.a"])
    assert [m.text for m in masks] == ["$.a", "$['b c'][0]", "$.l[-1]", "$.l[0:1]", "$.*.x", "$..y"]
    document = {"a": 1, "b c": [2, 3], "l": [4, 5, 6], "o": {"x": 7, "y": {"y": 8}}}
    assert apply_masks(document, masks) == 7  # $..y: o.y and o.y.y, both as the data came
    assert document == {
        "a": MASK,
        "b c": [MASK, 3],
        "l": [MASK, 5, MASK],
        "o": {"x": MASK, "y": MASK},
    }


def test_at_most_fifty_masks() -> None:
    with pytest.raises(InvalidInput, match="at most 50"):
        parse_masks([f"$.f{i}" for i in range(51)])


def test_registering_an_api_with_a_bad_mask_is_refused(gw: Harness) -> None:
    api = Api("bad", "http://127.0.0.1:9", Injection(InjectionKind.HEADER), "dev", masks=("$[?@]",))
    with pytest.raises(InvalidInput, match="no filters"):
        directory.add_api(gw.ctx, None, api, Secret("s3cr3t-value"))
    assert all(a.name != "bad" for a in directory.list_apis(gw.ctx))


def test_a_policy_with_a_bad_mask_names_its_line() -> None:
    text = POLICY.replace(
        'mask: ["$.name", "$.card.number"]', 'mask:\n      - "$.name"\n      - "$[?@.x]"'
    )
    with pytest.raises(ConfigError) as caught:
        parse_policy(text, "masks.yaml")
    assert caught.value.detail.startswith("masks.yaml:10: rules[0].mask[1]: mask '$[?@.x]': ")
    assert "no filters" in caught.value.detail
