"""The egress policy: literal checks at create, resolver checks at connect, rebinding."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import given
from hypothesis import strategies as st

from igris_mw._errors import ConfigurationError, UpstreamError, ValidationError
from igris_mw._policy.egress import (
    EgressForbidden,
    EgressPolicy,
    UpstreamForbidden,
    check_address,
    check_connect_host,
    check_url_literal,
    classify_address,
    parse_host_address,
    parse_networks,
)
from igris_mw._policy.resolver import EgressResolver

LOOPBACK = parse_networks("127.0.0.0/8")
EVERYTHING = parse_networks("0.0.0.0/0, ::/0")

FORBIDDEN_URLS = [
    "http://127.0.0.1/",
    "http://127.0.0.1:8080/api/v1/",
    "http://localhost./",  # a name: allowed at create (no DNS); see below
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[::169.254.169.254]/",
    "http://[64:ff9b::169.254.169.254]/",
    "http://[2002:a9fe:a9fe::1]/",
    "http://2852039166/",
    "http://0251.0376.0251.0376/",
    "http://0xA9FEA9FE/",
    "http://0xa9.0xfe.0xa9.0xfe/",
    "http://0xa9.254.43518/",
    "http://127.1/",
    "http://0x7f.1/",
    "http://0177.0.0.1/",
    "http://127.0.0.1./",
    "http://0/",
    "http://0.0.0.0/",
    "http://[::]/",
    "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[fe80::1%25eth0]/",
    "http://[FE80::1]/",
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://[ff02::1]/",
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://100.100.100.200/",
    "http://169.254.170.2/",
    "http://[fd00:ec2::254]/",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
    "http://240.0.0.1/",
    "http://metadata.google.internal/",
    "http://METADATA.GOOGLE.INTERNAL./computeMetadata/v1/",
    "http://metadata.goog/",
    "https://metadata.goog.:443/",
    "http://%31%32%37.0.0.1/",
    "http://\uff11\uff12\uff17\uff0e\uff10\uff0e\uff10\uff0e\uff11/",
]
FORBIDDEN_URLS.remove("http://localhost./")

PUBLIC_URLS = [
    "https://api.github.com/mcp",
    "http://8.8.8.8/",
    "http://134744072/",  # 8.8.8.8 in decimal: a public address in any notation is fine
    "https://[2606:4700:4700::1111]/mcp",
    "http://[::ffff:8.8.8.8]/",
    "http://[64:ff9b::8.8.8.8]/",
    "http://[2002:808:808::1]/",
    "http://localhost/",  # a name is not resolved at create; refused at connect
    "http://metadata.google.internal.example.com/",
]


@pytest.mark.parametrize("url", FORBIDDEN_URLS)
def test_forbidden_literal_is_422_upstream_forbidden(url: str) -> None:
    """Every forbidden literal and metadata name is a 422 upstream_forbidden on upstreamUrl."""
    with pytest.raises(UpstreamForbidden) as info:
        check_url_literal(url)
    exc = info.value
    assert exc.status == 422
    assert exc.code == "upstream_forbidden"
    assert exc.field == "upstreamUrl"
    assert isinstance(exc, ValidationError)
    assert exc.to_json()["error"]["code"] == "upstream_forbidden"


@pytest.mark.parametrize("url", PUBLIC_URLS)
def test_public_url_is_accepted(url: str) -> None:
    """Public literals (any notation) and names pass the create-time check."""
    check_url_literal(url)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "file:///etc/passwd",
        "gopher://127.0.0.1/",
        "http://user:pw@example.com/",
        "http://user@example.com/",
        "http://example.com\\@127.0.0.1/",
        "http:///nohost",
        "http://1.2.3.4.5/",
        "http://0x1.0xfffffffff/",
        "http://256.1.1.1/",
        "http://09.1.1.1/",
    ],
)
def test_bad_scheme_userinfo_or_numeric_host_is_422(url: str) -> None:
    """Non-http(s), user-info, a backslash and malformed numeric hosts are 422 on upstreamUrl."""
    with pytest.raises(ValidationError) as info:
        check_url_literal(url)
    assert info.value.field == "upstreamUrl"
    assert info.value.status == 422


def test_message_names_the_settings_that_open_a_range() -> None:
    """A forbidden internal range names every setting that allows it."""
    with pytest.raises(UpstreamForbidden) as info:
        check_url_literal("http://10.1.2.3:9000/mcp")
    message = info.value.message
    assert "upstreamUrl" in message
    assert "private" in message
    assert "IGRIS_ALLOW_UPSTREAM_NETWORKS" in message
    assert "--allow-upstream-network" in message
    assert "allow_upstream_networks=" in message


def test_metadata_message_says_nothing_opens_it() -> None:
    """A metadata endpoint's message says it is refused always, with no setting to open it."""
    with pytest.raises(UpstreamForbidden) as info:
        check_url_literal("http://169.254.169.254/", EVERYTHING)
    assert "metadata" in info.value.message
    assert "no setting" in info.value.message
    assert "IGRIS_ALLOW_UPSTREAM_NETWORKS" not in info.value.message


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/",
        "http://[::ffff:169.254.169.254]/",
        "http://0xA9FEA9FE/",
        "http://169.254.170.2/",
        "http://[fd00:ec2::254]/",
        "http://100.100.100.200/",
        "http://metadata.google.internal/",
        "http://metadata.goog./",
    ],
)
def test_metadata_refused_even_when_everything_is_allowed(url: str) -> None:
    """Metadata addresses and names are refused even inside an allowed network."""
    with pytest.raises(UpstreamForbidden):
        check_url_literal(url, EVERYTHING)
    with pytest.raises(EgressForbidden):
        EgressPolicy(EVERYTHING).check_connect_host(url.split("/")[2].strip("[]"))


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/", "http://127.1/", "http://[::ffff:127.0.0.1]/", "http://2130706433/"],
)
def test_allowed_network_opens_its_range_in_every_notation(url: str) -> None:
    """Allowing 127.0.0.0/8 opens loopback in every spelling, and nothing else."""
    check_url_literal(url, LOOPBACK)
    with pytest.raises(UpstreamForbidden):
        check_url_literal("http://10.0.0.1/", LOOPBACK)
    with pytest.raises(UpstreamForbidden):
        check_url_literal("http://[::1]/", LOOPBACK)


def test_parse_networks_accepts_lists_and_comma_strings() -> None:
    """Comma-separated CIDRs, lists and bare addresses parse; blanks are ignored."""
    assert parse_networks("10.0.0.0/8, 127.0.0.0/8,") == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("127.0.0.0/8"),
    )
    assert parse_networks(["fd00::/8", "192.168.1.7"]) == (
        ipaddress.ip_network("fd00::/8"),
        ipaddress.ip_network("192.168.1.7/32"),
    )
    assert parse_networks(None) == ()
    assert parse_networks("") == ()


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
        ("10.0.0.0/33", "is not a CIDR network"),
        ("intranet", "is not a CIDR network"),
        ("10.0.0.0/8, nope", "'nope'"),
    ],
)
def test_parse_networks_errors_name_the_bad_entry(value: str, needle: str) -> None:
    """A bad allowed network is a ConfigurationError naming the entry and the fix."""
    with pytest.raises(ConfigurationError) as info:
        parse_networks(value)
    assert needle in info.value.message


# ------------------------------------------------------------ property tests

FORBIDDEN_V4_NETS = [
    ipaddress.IPv4Network(n)
    for n in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "0.0.0.0/8",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
]


@st.composite
def forbidden_v4(draw: st.DrawFn) -> ipaddress.IPv4Address:
    net = draw(st.sampled_from(FORBIDDEN_V4_NETS))
    offset = draw(st.integers(0, net.num_addresses - 1))
    return net[offset]


def _public(addr: ipaddress.IPv4Address) -> bool:
    # The stdlib's view of "public", minus the ranges we refuse on purpose
    # although some Python versions call them global (multicast, the 6to4
    # relay anycast, IETF protocol assignments).
    return (
        addr.is_global
        and not addr.is_multicast
        and addr not in ipaddress.IPv4Network("192.88.99.0/24")
        and addr not in ipaddress.IPv4Network("192.0.0.0/24")
    )


public_v4: st.SearchStrategy[ipaddress.IPv4Address] = (
    st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address).filter(_public)
)


def _part(draw: st.DrawFn, value: int) -> str:
    style = draw(st.sampled_from(["dec", "oct", "hex", "HEX"]))
    if style == "dec":
        return str(value)
    if style == "oct":
        return "0" + draw(st.sampled_from(["", "0"])) + format(value, "o")
    zeros = draw(st.sampled_from(["", "0", "00"]))
    digits = format(value, "x" if style == "hex" else "X")
    return draw(st.sampled_from(["0x", "0X"])) + zeros + digits


@st.composite
def ipv4_spelling(draw: st.DrawFn, addr: ipaddress.IPv4Address) -> str:
    """One of the many ways inet_aton and WHATWG parsers accept ``addr``."""
    value = int(addr)
    n = draw(st.integers(1, 4))
    octets = list(addr.packed)
    head = octets[: n - 1]
    rest = value & ((1 << (8 * (5 - n))) - 1) if n > 1 else value
    parts = [_part(draw, b) for b in head] + [_part(draw, rest)]
    spelling = ".".join(parts)
    if draw(st.booleans()):
        spelling += "."
    return spelling


@st.composite
def ipv6_embedding(draw: st.DrawFn, addr: ipaddress.IPv4Address) -> str:
    """An IPv6 form that embeds ``addr``: mapped, compatible, NAT64 or 6to4."""
    hi, lo = int(addr) >> 16, int(addr) & 0xFFFF
    form = draw(st.sampled_from(["mapped", "mapped_hex", "compat", "nat64", "6to4"]))
    text = {
        "mapped": f"::ffff:{addr}",
        "mapped_hex": f"::ffff:{hi:x}:{lo:x}",
        "compat": f"::{addr}",
        "nat64": f"64:ff9b::{addr}",
        "6to4": f"2002:{hi:x}:{lo:x}::{draw(st.integers(0, 0xFFFF)):x}",
    }[form]
    if form == "compat" and int(addr) <= 1:
        text = f"::ffff:{addr}"
    if draw(st.booleans()):
        text = text.upper()
    return f"[{text}]"


@given(forbidden_v4().flatmap(ipv4_spelling))
def test_every_ipv4_spelling_of_a_forbidden_address_is_refused(spelling: str) -> None:
    """Dotted, decimal, octal, hex, mixed and short forms of a forbidden address: all 422."""
    with pytest.raises(UpstreamForbidden):
        check_url_literal(f"http://{spelling}/mcp")
    with pytest.raises(EgressForbidden):
        check_connect_host(spelling)


@given(st.data())
def test_spellings_are_what_inet_aton_reads(data: st.DataObject) -> None:
    """The generator's spellings mean what the C library reads them as (the test tests itself)."""
    addr = data.draw(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address))
    spelling = data.draw(ipv4_spelling(addr))
    assert parse_host_address(spelling) == addr
    assert socket.inet_aton(spelling.rstrip(".")) == addr.packed


@given(forbidden_v4().flatmap(ipv6_embedding))
def test_every_ipv6_embedding_of_a_forbidden_address_is_refused(host: str) -> None:
    """IPv4-mapped, -compatible, NAT64 and 6to4 forms of a forbidden address: all 422."""
    with pytest.raises(UpstreamForbidden):
        check_url_literal(f"http://{host}:8443/")


@given(public_v4.flatmap(lambda a: st.one_of(ipv4_spelling(a), ipv6_embedding(a))))
def test_public_addresses_are_accepted_in_every_notation(host: str) -> None:
    """A public address passes in any notation and any embedding."""
    check_url_literal(f"https://{host}/mcp")


LINK_LOCAL_V6 = ipaddress.IPv6Network("fe80::/10")


@given(
    st.integers(0, LINK_LOCAL_V6.num_addresses - 1).map(lambda i: LINK_LOCAL_V6[i]),
    st.text("abcxyz019", min_size=1),
)
def test_ipv6_zone_ids_do_not_hide_link_local(addr: ipaddress.IPv6Address, zone: str) -> None:
    """fe80::/10 with any zone id, raw or %25-encoded, is refused."""
    with pytest.raises(UpstreamForbidden):
        check_url_literal(f"http://[{addr}%25{zone}]/")
    with pytest.raises(EgressForbidden):
        check_connect_host(f"{addr}%{zone}")


@given(st.text(st.characters(exclude_categories=()), max_size=300))
def test_hostile_hosts_never_crash(text: str) -> None:
    """Any string as a URL host is accepted, refused with a 422, or refused at connect; no crash."""
    with contextlib.suppress(ValidationError):
        check_url_literal(f"http://{text}/")
    with contextlib.suppress(EgressForbidden):
        check_connect_host(text)


# --------------------------------------------------------------- connect time


def test_check_address_raises_egress_forbidden_502() -> None:
    """A forbidden resolved address is a 502 upstream_forbidden naming the host, not the address."""
    with pytest.raises(EgressForbidden) as info:
        check_address("10.9.8.7", host="internal.example")
    exc = info.value
    assert isinstance(exc, UpstreamError)
    assert (exc.status, exc.code) == (502, "upstream_forbidden")
    assert exc.host == "internal.example"
    assert "internal.example" in exc.message
    assert "10.9.8.7" not in exc.message
    assert exc.refusal.reason == "private"
    check_address("10.9.8.7", parse_networks("10.0.0.0/8"))
    check_address("1.1.1.1")


def test_classify_address_reasons() -> None:
    """Each forbidden class is named as the contract names it."""
    cases = {
        "127.0.0.1": "loopback",
        "10.0.0.1": "private",
        "fd00::1": "private",
        "169.254.1.1": "link-local",
        "fe80::1": "link-local",
        "100.64.0.1": "shared",
        "0.0.0.0": "unspecified",
        "::": "unspecified",
        "239.1.1.1": "multicast",
        "ff05::2": "multicast",
        "255.255.255.255": "broadcast",
        "240.0.0.1": "reserved",
        "2001:db8::1": "reserved",
        "169.254.169.254": "metadata",
        "::ffff:100.100.100.200": "metadata",
    }
    for text, reason in cases.items():
        refusal = classify_address(text)
        assert refusal is not None, text
        assert refusal.reason == reason, text


class FakeResolver(AbstractResolver):
    """Answers from a function of the call number; counts calls."""

    def __init__(self, answer: Callable[[int], list[str]]) -> None:
        self.answer = answer
        self.calls: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls.append(host)
        return [
            {
                "hostname": host,
                "host": ip,
                "port": port,
                "family": socket.AF_INET6 if ":" in ip else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for ip in self.answer(len(self.calls))
        ]

    async def close(self) -> None:
        pass


async def test_resolver_drops_forbidden_addresses_and_refuses_when_none_is_left() -> None:
    """Forbidden answers are dropped (only checked ones can be reached); none left: refused."""
    mixed = EgressResolver((), FakeResolver(lambda _: ["1.1.1.1", "127.0.0.1", "::1"]))
    answers = await mixed.resolve("mixed.example", 443)
    assert [a["host"] for a in answers] == ["1.1.1.1"]
    internal = EgressResolver((), FakeResolver(lambda _: ["10.0.0.1", "::1"]))
    with pytest.raises(EgressForbidden) as info:
        await internal.resolve("internal.example", 443)
    assert info.value.host == "internal.example"
    fine = EgressResolver((), FakeResolver(lambda _: ["1.1.1.1", "2606:4700::1111"]))
    answers = await fine.resolve("fine.example", 443)
    assert [a["host"] for a in answers] == ["1.1.1.1", "2606:4700::1111"]


async def test_localhost_with_ipv4_loopback_allowed_keeps_only_that_address() -> None:
    """localhost answering 127.0.0.1 and ::1 with only 127.0.0.0/8 allowed: 127.0.0.1 is used."""
    resolver = EgressResolver(LOOPBACK, FakeResolver(lambda _: ["::1", "127.0.0.1"]))
    answers = await resolver.resolve("localhost", 80)
    assert [a["host"] for a in answers] == ["127.0.0.1"]


async def test_any_metadata_answer_refuses_the_host_outright() -> None:
    """A name answering a metadata address among public ones is refused, whatever is allowed."""
    resolver = EgressResolver(EVERYTHING, FakeResolver(lambda _: ["1.1.1.1", "169.254.169.254"]))
    with pytest.raises(EgressForbidden) as info:
        await resolver.resolve("sneaky.example", 80)
    assert info.value.refusal.always


async def test_resolver_refuses_metadata_names_without_lookup() -> None:
    """A metadata name is refused before any DNS query, even with everything allowed."""
    inner = FakeResolver(lambda _: ["8.8.8.8"])
    resolver = EgressResolver(EVERYTHING, inner)
    with pytest.raises(EgressForbidden):
        await resolver.resolve("Metadata.Google.Internal.", 80)
    assert inner.calls == []


async def test_default_inner_resolver_resolves_localhost_and_refuses_it() -> None:
    """With aiohttp's default resolver, localhost is refused unless loopback is allowed."""
    with pytest.raises(EgressForbidden):
        await EgressResolver().resolve("localhost", 80)
    allowed = EgressResolver(parse_networks("127.0.0.0/8, ::1/128"))
    answers = await allowed.resolve("localhost", 80)
    assert answers
    await allowed.close()


class RecordingServer:
    """A raw HTTP/1.1 server on one loopback address that records each request head."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def serving(host: str, port: int = 0) -> AsyncIterator[tuple[RecordingServer, int]]:
    recorder = RecordingServer()
    server = await asyncio.start_server(recorder.handle, host, port, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    try:
        yield recorder, bound
    finally:
        server.close()
        await server.wait_closed()


def _session(resolver: AbstractResolver, **kw: Any) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(resolver=resolver, **kw)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


async def test_forbidden_resolution_surfaces_as_egress_forbidden_through_a_session() -> None:
    """Through a real ClientSession the refusal arrives as EgressForbidden itself; nothing sent."""
    async with serving("127.0.0.1") as (recorder, port):
        resolver = EgressResolver((), FakeResolver(lambda _: ["127.0.0.1"]))
        async with _session(resolver) as session:
            with pytest.raises(EgressForbidden) as info:
                await session.get(f"http://upstream.test:{port}/mcp")
        assert not isinstance(info.value, aiohttp.ClientError)
        assert recorder.connections == 0

        # For contrast, the integration's other case: a lookup failure (an
        # OSError) is wrapped by aiohttp in ClientConnectorDNSError.
        class Failing(FakeResolver):
            async def resolve(self, *a: Any, **kw: Any) -> list[ResolveResult]:
                raise OSError(-2, "Name or service not known")

        async with _session(EgressResolver((), Failing(lambda _: []))) as session:
            with pytest.raises(aiohttp.ClientConnectorDNSError):
                await session.get(f"http://nowhere.test:{port}/")
        assert recorder.connections == 0


async def test_allowed_loopback_connects_with_the_name_as_host_header() -> None:
    """With loopback allowed the request reaches the resolved address; Host stays the name."""
    async with serving("127.0.0.1") as (recorder, port):
        resolver = EgressResolver(LOOPBACK, FakeResolver(lambda _: ["127.0.0.1"]))
        async with (
            _session(resolver) as session,
            session.get(f"http://upstream.test:{port}/mcp") as resp,
        ):
            assert resp.status == 200
            assert await resp.read() == b"ok"
    assert len(recorder.heads) == 1
    assert f"Host: upstream.test:{port}".encode() in recorder.heads[0]


async def test_dns_rebinding_cannot_switch_the_checked_address() -> None:
    """A resolver answering allowed, then loopback: loopback is refused and sees nothing.

    127.0.0.2 stands for the public address (allowed by policy; the test may
    only talk to loopback); 127.0.0.1 on the same port is the internal
    service the rebinding aims at.
    """
    async with serving("127.0.0.2") as (public, port), serving("127.0.0.1", port) as (internal, _):
        inner = FakeResolver(lambda n: ["127.0.0.2"] if n == 1 else ["127.0.0.1"])
        resolver = EgressResolver(parse_networks("127.0.0.2/32"), inner)
        async with _session(resolver, use_dns_cache=False, force_close=True) as session:
            async with session.get(f"http://rebind.test:{port}/first") as resp:
                assert resp.status == 200
            with pytest.raises(EgressForbidden):
                await session.get(f"http://rebind.test:{port}/second")
            for _ in range(3):
                with pytest.raises(EgressForbidden):
                    await session.post(f"http://rebind.test:{port}/again", data=b"x")
        assert inner.calls == ["rebind.test"] * 5  # one lookup per request, never a second
    assert len(public.heads) == 1
    assert public.heads[0].startswith(b"GET /first ")
    assert internal.connections == 0
    assert internal.heads == []


async def test_ip_literal_bypasses_resolver_so_check_connect_host_covers_it() -> None:
    """aiohttp never calls the resolver for an IP literal: check_connect_host covers literals."""
    inner = FakeResolver(lambda _: ["8.8.8.8"])
    async with (
        serving("127.0.0.1") as (recorder, port),
        _session(EgressResolver((), inner)) as session,
        session.get(f"http://127.0.0.1:{port}/") as resp,
    ):
        assert resp.status == 200
    assert inner.calls == []
    assert len(recorder.heads) == 1
    with pytest.raises(EgressForbidden):
        check_connect_host("127.0.0.1")
    check_connect_host("127.0.0.1", LOOPBACK)
    check_connect_host("example.com")
