"""The registrar's HTTP side in process: the bindings API's bearer token, open health and metrics, the Server header."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from registrar.http import binding_json, check_api_token, make_app, start_server
from registrar.metrics import Metrics
from registrar.model import Binding, Catalog
from registrar.sip.trace import TraceRecorder, from_json
from registrar.store.memory import MemoryStore
from registrar.trace_gathering import TraceGatherer

TOKEN = "Zm9vYmFyLXRva2VuLTEyMzQ1Njc4OTA="


async def serving(api_token: str | None) -> tuple[aiohttp.web.AppRunner, str]:
    store = MemoryStore()
    app = make_app(store, Metrics(store, Catalog), lambda: True, api_token)
    runner = await start_server(app, ["127.0.0.1"], 0)
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@pytest.fixture
async def with_token() -> AsyncIterator[str]:
    runner, url = await serving(TOKEN)
    yield url
    await runner.cleanup()


@pytest.fixture
async def without_token() -> AsyncIterator[str]:
    runner, url = await serving(None)
    yield url
    await runner.cleanup()


async def get(url: str, authorization: str | None = None) -> tuple[int, dict[str, str], str]:
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, dict(response.headers), await response.text()


async def test_the_bindings_api_answers_the_right_bearer_token_only(with_token: str) -> None:
    for path in ("/api/v1/bindings", "/api/v1/bindings/alice@sip.example.test"):
        status, headers, _ = await get(with_token + path)
        assert (status, headers["WWW-Authenticate"]) == (401, 'Bearer realm="sipreg"')
        for wrong in (f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", "Bearer", f"Basic {TOKEN}", TOKEN, "Bearer ẞ"):
            status, headers, _ = await get(with_token + path, wrong)
            assert status == 401, wrong
            assert headers["WWW-Authenticate"] == 'Bearer realm="sipreg", error="invalid_token"'
        for right in (f"Bearer {TOKEN}", f"bearer  {TOKEN} "):  # the scheme is case-insensitive (RFC 9110)
            status, _, body = await get(with_token + path, right)
            assert status == 200 and '"bindings": []' in body


async def test_bytes_that_are_not_utf8_in_the_header_are_a_wrong_token_not_an_error(with_token: str) -> None:
    host, port = with_token.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /api/v1/bindings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe" + TOKEN.encode()
                 + b"\r\nConnection: close\r\n\r\n")
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401 ")


async def test_without_a_token_the_bindings_api_is_not_served(without_token: str) -> None:
    for path in ("/api/v1/bindings", "/api/v1/bindings/alice@sip.example.test"):
        status, headers, _ = await get(without_token + path, f"Bearer {TOKEN}")
        assert status == 404 and "WWW-Authenticate" not in headers


async def test_health_readiness_and_metrics_need_no_token(with_token: str) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        status, _, _ = await get(with_token + path)
        assert status == 200, path


async def test_every_answer_says_server_sipreg_and_no_version(
    with_token: str, caplog: pytest.LogCaptureFixture
) -> None:
    for path, authorization, expected in (("/healthz", None, 200), ("/api/v1/bindings", None, 401),
                                          ("/api/v1/bindings", f"Bearer {TOKEN}", 200), ("/nowhere", None, 404)):
        status, headers, _ = await get(with_token + path, authorization)
        assert (status, headers["Server"]) == (expected, "sipreg")
    # aiohttp answers what it cannot parse itself, outside the application: still no version, and no traceback.
    host, port = with_token.removeprefix("http://").split(":")
    caplog.set_level(logging.DEBUG)
    for garbage in (b"GET / HTTP/1.1\r\nContent-Length: zz\r\n\r\n", b"\x16\x03\x01\x00\xa5\x01\x00\r\n\r\n"):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(garbage)
        answer = await reader.read()
        writer.close()
        head = answer.split(b"\r\n\r\n")[0].decode()
        assert head.startswith("HTTP/1.0 400 ") and "\r\nServer: sipreg\r\n" in head + "\r\n", head
    assert not [record for record in caplog.records if record.exc_info or record.levelno > logging.DEBUG]
    assert [record.getMessage() for record in caplog.records if record.name == "sipreg.http"] == [
        "Error handling request from 127.0.0.1: 400 BadHttpMessage",
        "Error handling request from 127.0.0.1: 400 BadHttpMethod",
    ]


def test_a_binding_shows_its_source_as_text_and_as_host_and_port_and_behind_nat_where_it_is_reached() -> None:
    behind_nat = Binding("alice@sip.example.test", "sip:alice@192.168.1.20:5060;transport=tcp", 1_000_600.0, "c", 1,
                         transport="tcp", source_host="2001:db8::9", source_port=40000, flow="tcp-1",
                         registered_at=1_000_000.0)
    shown = binding_json(behind_nat, 1_000_000.0)
    assert shown["source"] == "tcp:[2001:db8::9]:40000"
    assert (shown["sourceHost"], shown["sourcePort"]) == ("2001:db8::9", 40000)
    assert shown["received"] == "sip:[2001:db8::9]:40000;transport=tcp"
    unknown = binding_json(behind_nat._replace(source_host="", source_port=0), 1_000_000.0)
    assert unknown["source"] == "" and unknown["sourceHost"] is None and unknown["sourcePort"] is None
    assert unknown["received"] is None


def test_a_token_is_at_least_16_characters_a_client_can_send() -> None:
    assert check_api_token(f"  {TOKEN}\n") == TOKEN
    for bad, why in (("", "may hold only"), ("short-token", "has 11 characters; use at least 16"),
                     ("with space inside-0123456789", "may hold only"), ("ünïcode-0123456789abc", "may hold only"),
                     ("padding=in-the-middle-0123", "may hold only")):
        with pytest.raises(ValueError, match=why):
            check_api_token(bad)


async def test_the_trace_api_answers_the_token_only_in_json_text_and_pcap() -> None:
    trace = TraceRecorder("node-1")
    trace.identify("c1", "alice@sip.example.test", "198.51.100.7")
    register = b"REGISTER sip:sip.example.test SIP/2.0\r\nCall-ID: c1\r\nContent-Length: 0\r\n\r\n"
    trace.received(register, "udp", ("198.51.100.7", 40000), ("192.0.2.1", 5060), "c1")
    store = MemoryStore()
    app = make_app(store, Metrics(store, Catalog), lambda: True, TOKEN, TraceGatherer(lambda: {}, TOKEN, trace))
    runner = await start_server(app, ["127.0.0.1"], 0)
    url = "http://{}:{}/api/v1/trace/".format(*runner.addresses[0][:2])
    try:
        assert (await get(url + "alice@sip.example.test"))[0] == 401
        status, _, body = await get(url + "sip:alice@SIP.example.test", f"Bearer {TOKEN}")
        answer = json.loads(body)
        assert status == 200 and answer["key"] == "alice@sip.example.test" and answer["nodes"] == ["node-1"]
        assert [from_json(item).data for item in answer["messages"]] == [register]
        status, _, body = await get(url + "alice@sip.example.test?format=text", f"Bearer {TOKEN}")
        assert status == 200 and body.endswith("198.51.100.7:40000 -> 192.0.2.1:5060 UDP REGISTER sip:sip.example.test SIP/2.0\n")
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "alice@sip.example.test?format=pcap", headers=headers) as response:
                assert response.content_type == "application/vnd.tcpdump.pcap"
                assert (await response.read())[:4] == b"\xd4\xc3\xb2\xa1"  # pcap's magic, little-endian
        for bad in ("alice", "alice@sip.example.test?format=xml", "alice@sip.example.test?since=soon"):
            status, _, body = await get(url + bad, f"Bearer {TOKEN}")
            assert status == 400, bad
    finally:
        await runner.cleanup()
