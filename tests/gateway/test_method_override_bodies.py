"""``_method`` in every body that Rack-like frameworks read as a form (untyped, chunked or
declared, and multipart), and nothing lost from the bodies that carry none.

A refusal before the upstream is asked is a 400 ``method-override``, no upstream call and
one ``access.denied`` event. A multipart ``_method`` part past the first
:data:`~jitgate.gateway.bodies.MAX_FORM_SIZE` bytes stops the upload under way: the
upstream never has a whole request, the caller gets the same 400, audited as the call's
``error``. The bodies go to a hashing upstream (the echo upstream reads at most 1 MiB).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from aiohttp import web

from jitgate.audit.events import EventType
from jitgate.domain.models import Api, Injection, InjectionKind
from jitgate.gateway.bodies import MAX_PART_HEAD, BodyLimitError, PartScanner
from jitgate.secrets import Secret
from jitgate.services import directory
from tests.gateway.conftest import Harness, Hit, Reply, serve

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("received")]

TARGET = "/hash/v1/x"
BIG = 3 << 20
BOUNDARY = "----jitgate7MA4YWxkTrZu0gW"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
Headers = list[tuple[str, str]]


@dataclass
class Bodies:
    """How many whole bodies the hashing upstream received (its calls are ``gw.hits``)."""

    whole: int = 0


@pytest.fixture
async def received(gw: Harness) -> AsyncIterator[Bodies]:
    """An upstream that streams the body through SHA-256 and answers its length and hash,
    registered as the API ``hash``; a body broken off raises out of the handler."""
    bodies = Bodies()

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        gw.hits.append(Hit("hash", request.method, request.raw_path))
        digest, length = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            length += len(chunk)
        bodies.whole += 1
        return web.json_response({"body_length": length, "body_sha256": digest.hexdigest()})

    runner, port = await serve(web.Server(handle))
    gw.ctx.allow_link_local_upstreams = True
    directory.add_api(
        gw.ctx,
        None,
        Api("hash", f"http://127.0.0.1:{port}", Injection(InjectionKind.HEADER), "dev"),
        Secret("sk_hash_0123456789"),
    )
    try:
        yield bodies
    finally:
        await runner.cleanup()


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def chunked(data: bytes, size: int = 64 * 1024) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in _chunks(data, size)) + b"0\r\n\r\n"


async def send(
    gw: Harness, headers: Headers, body: bytes, *, chunk: int | None = 64 * 1024
) -> Reply:
    """POST ``body`` to the echo upstream under a ``POST /**`` grant: chunked in pieces of
    ``chunk`` bytes, or (``chunk=None``) with its ``Content-Length``."""
    token = gw.issue(["POST /**"], api="hash").token
    lines = [f"POST {TARGET} HTTP/1.1", "Host: gateway.test", f"Authorization: Bearer {token}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if chunk is None:
        lines.append(f"Content-Length: {len(body)}")
    else:
        lines.append("Transfer-Encoding: chunked")
    lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return await gw.raw(head + (body if chunk is None else chunked(body, chunk)))


def assert_refused(gw: Harness, reply: Reply) -> None:
    gw.assert_denied(reply, 400, "method-override", api="hash")
    assert len(gw.events(EventType.ACCESS_DENIED)) == 1
    assert gw.events(EventType.ACCESS_ALLOWED) == []


def assert_intact(gw: Harness, reply: Reply, body: bytes) -> None:
    assert reply.status == 200, reply.body
    echoed = reply.json()
    assert echoed["body_length"] == len(body)
    assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert len(gw.hits) == 1
    (event,) = gw.events(EventType.ACCESS_ALLOWED)
    assert "error" not in event.data


def part(disposition: str, value: bytes, extra: str = "") -> bytes:
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n{extra}\r\n"
    return head.encode() + value + b"\r\n"


def multipart(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def noise(size: int) -> bytes:
    """Incompressible-looking bytes without ``&``, ``=`` or the boundary."""
    seed = hashlib.sha256(b"jitgate").digest()
    block = bytes(b % 26 + 97 for b in seed * 64)  # 2 KiB of letters
    return (block * (size // len(block) + 1))[:size]


# untyped bodies ------------------------------------------------------------------------


async def test_an_untyped_chunked_body_with_method_is_refused(gw: Harness) -> None:
    reply = await send(gw, [], b"a=1&_method=DELETE", chunk=4)
    assert_refused(gw, reply)


async def test_a_blank_content_type_is_untyped(gw: Harness) -> None:
    reply = await send(gw, [("Content-Type", " ")], b"_method=DELETE", chunk=4)
    assert_refused(gw, reply)


async def test_an_untyped_chunked_body_without_method_is_forwarded_whole(gw: Harness) -> None:
    body = b"a=1&method=DELETE&_methodx=1"
    reply = await send(gw, [], body, chunk=3)
    assert_intact(gw, reply, body)


@pytest.mark.parametrize("chunk", [64 * 1024, None], ids=["chunked", "declared"])
async def test_a_large_untyped_body_is_forwarded_intact(gw: Harness, chunk: int | None) -> None:
    body = noise(BIG)
    reply = await send(gw, [], body, chunk=chunk)
    assert_intact(gw, reply, body)


@pytest.mark.parametrize("chunk", [64 * 1024, None], ids=["chunked", "declared"])
async def test_a_large_untyped_body_with_method_first_is_refused(
    gw: Harness, chunk: int | None
) -> None:
    body = b"_method=DELETE&" + noise(BIG)
    reply = await send(gw, [], body, chunk=chunk)
    assert_refused(gw, reply)


async def test_a_large_untyped_body_with_method_past_the_first_mib_is_forwarded(
    gw: Harness,
) -> None:
    """Only the start of an untyped body (MAX_FORM_SIZE bytes, or a few reads more) is
    read as a form."""
    body = noise(BIG) + b"&_method=DELETE"
    reply = await send(gw, [], body)
    assert_intact(gw, reply, body)


# multipart bodies ----------------------------------------------------------------------

SPELLINGS = {
    "quoted": 'form-data; name="_method"',
    "unquoted": "form-data; name=_method",
    "upper-case": 'FORM-DATA; NAME="_method"',
    "spaced": 'form-data ;  name = "_method"',
    "after-filename": 'form-data; filename="a.txt"; name="_method"',
    "rfc7578-extended": "form-data; name*=utf-8''%5Fmethod",
}


@pytest.mark.parametrize("disposition", SPELLINGS.values(), ids=SPELLINGS.keys())
async def test_a_multipart_method_part_is_refused(gw: Harness, disposition: str) -> None:
    body = multipart(part('form-data; name="a"', b"1"), part(disposition, b"DELETE"))
    reply = await send(gw, [("Content-Type", MULTIPART)], body, chunk=5)
    assert_refused(gw, reply)


async def test_a_lower_case_part_header_is_read(gw: Harness) -> None:
    body = f'--{BOUNDARY}\r\ncontent-disposition: form-data; name="_method"\r\n\r\nPUT\r\n'
    reply = await send(gw, [("Content-Type", MULTIPART)], (body + f"--{BOUNDARY}--").encode())
    assert_refused(gw, reply)


@pytest.mark.parametrize("kind", ["multipart/mixed", "Multipart/Form-Data"])
async def test_every_multipart_type_is_checked(gw: Harness, kind: str) -> None:
    body = multipart(part('form-data; name="_method"', b"DELETE"))
    reply = await send(gw, [("Content-Type", f'{kind}; boundary="{BOUNDARY}"')], body, chunk=None)
    assert_refused(gw, reply)


async def test_a_multipart_upload_without_method_is_forwarded_whole(gw: Harness) -> None:
    body = multipart(
        part('form-data; name="title"', b"report"),
        part(
            'form-data; name="file"; filename="_method"',
            b"name=_method\r\n_method=DELETE",
            "Content-Type: text/plain\r\n",
        ),
    )
    reply = await send(gw, [("Content-Type", MULTIPART)], body, chunk=7)
    assert_intact(gw, reply, body)


@pytest.mark.parametrize("chunk", [64 * 1024, 1000, None], ids=["64k", "1000", "declared"])
async def test_a_large_multipart_upload_is_forwarded_intact(gw: Harness, chunk: int | None) -> None:
    body = multipart(
        part('form-data; name="title"', b"report"),
        part('form-data; name="file"; filename="big.bin"', noise(BIG), "Content-Type: x/y\r\n"),
    )
    reply = await send(gw, [("Content-Type", MULTIPART)], body, chunk=chunk)
    assert_intact(gw, reply, body)


@pytest.mark.parametrize("chunk", [64 * 1024, 1001, None], ids=["64k", "1001", "declared"])
async def test_a_method_part_after_a_large_part_stops_the_upload(
    gw: Harness, received: Bodies, chunk: int | None
) -> None:
    """The upload had begun: it is stopped before the body's end, so the upstream never
    has a whole request, and the caller gets the refusal."""
    body = multipart(
        part('form-data; name="file"; filename="big.bin"', noise(BIG)),
        part('form-data; name="_method"', b"DELETE"),
    )
    reply = await send(gw, [("Content-Type", MULTIPART)], body, chunk=chunk)
    assert (reply.status, reply.code) == (400, "method-override"), reply.body
    assert len(gw.hits) == 1  # the upload had begun
    assert received.whole == 0  # but never ended
    (event,) = gw.events(EventType.ACCESS_ALLOWED)
    assert event.data["error"] == "method-override"
    assert event.data["status"] == 400
    assert gw.events(EventType.ACCESS_DENIED) == []


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data",
        "multipart/form-data; boundary=",
        f"multipart/form-data; boundary={BOUNDARY}; boundary=other",
    ],
    ids=["none", "empty", "two"],
)
async def test_a_multipart_body_without_one_boundary_is_refused(
    gw: Harness, content_type: str
) -> None:
    body = multipart(part('form-data; name="a"', b"1"))
    reply = await send(gw, [("Content-Type", content_type)], body, chunk=None)
    assert_refused(gw, reply)


async def test_a_part_head_too_long_to_check_is_refused(gw: Harness) -> None:
    body = multipart(part('form-data; name="a"', b"1", f"X-Pad: {'p' * MAX_PART_HEAD}\r\n"))
    reply = await send(gw, [("Content-Type", MULTIPART)], body)
    assert_refused(gw, reply)


# the scanner, split at every byte --------------------------------------------------------


def _scan(data: bytes, cuts: tuple[int, ...]) -> bool:
    scanner = PartScanner(BOUNDARY.encode())
    edges = (0, *cuts, len(data))
    try:
        for start, end in itertools.pairwise(edges):
            scanner.feed(data[start:end])
    except BodyLimitError as exc:
        return exc.reason == "method-override"
    return False


def test_a_method_part_head_split_anywhere_is_found() -> None:
    body = multipart(part('form-data; name="a"', b"1"), part(SPELLINGS["quoted"], b"DELETE"))
    assert all(_scan(body, (cut,)) for cut in range(len(body) + 1))
    assert all(_scan(body, (cut, cut + 3)) for cut in range(len(body) - 2))


def test_a_body_without_a_method_part_is_never_refused_wherever_split() -> None:
    body = multipart(part('form-data; name="a"; filename="_method"', b"_method=x"))
    assert not any(_scan(body, (cut,)) for cut in range(len(body) + 1))


def test_a_method_part_after_the_close_delimiter_is_still_found() -> None:
    body = multipart(part('form-data; name="a"', b"1")) + part(SPELLINGS["quoted"], b"PUT")
    assert _scan(body, ())


@pytest.mark.parametrize("content_type", [None, "application/json", MULTIPART])
async def test_expect_continue_is_answered_once(gw: Harness, content_type: str | None) -> None:
    """Whether the body is checked first or streams unread, one ``100 Continue``."""
    token = gw.issue(["POST /**"], api="hash").token
    body = multipart(part('form-data; name="a"', b"1"))
    typed = f"Content-Type: {content_type}\r\n" if content_type else ""
    head = (
        f"POST {TARGET} HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {token}\r\n{typed}"
        f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(head.encode())
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
    assert rest.startswith(b"HTTP/1.1 200 ")
    assert b"100 Continue" not in rest
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["body_length"] == len(body)
