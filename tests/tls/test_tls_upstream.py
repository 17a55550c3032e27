"""TLS to real upstreams with the gateway's contexts and a real aiohttp session.

Each test sends real requests to a uvicorn TLS upstream (certificates from a
throwaway ``trustme`` CA); the upstream's ``CredentialGuard`` answers 401 to
these credential-less requests, so a 401 means the TLS handshake and the
request went through.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import trustme
from tls_harness import INTERNAL_NAME, ForwardProxy, StaticResolver, TlsFront, TlsUpstreamServer

from igris_mw._errors import UpstreamError
from igris_mw._proxy.outbound import parse_upstream_proxy
from igris_mw._proxy.tls import (
    ContextCache,
    TlsMaterial,
    base_context,
    build_context,
    tls_error_for,
)
from igris_mw._tls_material import load_ca_file


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A session configured like the gateway's: no env proxies, no cookies."""
    async with aiohttp.ClientSession(trust_env=False, cookie_jar=aiohttp.DummyCookieJar()) as http:
        yield http


async def fetch(
    http: aiohttp.ClientSession, url: str, context: ssl.SSLContext, **options: Any
) -> int:
    async with http.get(url, ssl=context, **options) as response:
        await response.read()
        return response.status


async def tls_failure(
    http: aiohttp.ClientSession, url: str, context: ssl.SSLContext, host: str, **options: Any
) -> UpstreamError:
    with pytest.raises(aiohttp.ClientError) as caught:
        await fetch(http, url, context, **options)
    error = tls_error_for(caught.value, host)
    assert error is not None, f"not recognised as TLS: {caught.value!r}"
    return error


def material_for(ca: trustme.CA, identity: trustme.LeafCert | None = None) -> TlsMaterial:
    if identity is None:
        return TlsMaterial(ca_pem=ca.cert_pem.bytes().decode())
    from igris_mw.models import Secret

    return TlsMaterial(
        ca_pem=ca.cert_pem.bytes().decode(),
        client_cert_pem="".join(blob.bytes().decode() for blob in identity.cert_chain_pems),
        client_key=Secret(identity.private_key_pem.bytes()),
    )


async def test_private_ca_is_refused_without_configuration(
    session: aiohttp.ClientSession, tls_upstream: TlsUpstreamServer
) -> None:
    """The default context (system CAs) refuses the private CA: 502 upstream_tls_error."""
    before = len(tls_upstream.requests())
    error = await tls_failure(session, tls_upstream.url(), base_context(), "localhost")
    assert error.status == 502
    assert error.code == "upstream_tls_error"
    assert error.message == (
        "TLS to upstream localhost failed: "
        "the certificate's issuer is not trusted (configure its CA)"
    )
    assert len(tls_upstream.requests()) == before


async def test_global_ca_file_verifies(
    session: aiohttp.ClientSession, tls_upstream: TlsUpstreamServer, tls_ca_file: Any
) -> None:
    """With IGRIS_UPSTREAM_CA_FILE's CA the default context of every connection verifies."""
    cache = ContextCache(ca_file_pem=load_ca_file(tls_ca_file))
    context = cache.get("plain", 1, TlsMaterial())
    assert context is cache.default
    assert await fetch(session, tls_upstream.url(), context) == 401


async def test_connection_ca_verifies(
    session: aiohttp.ClientSession, tls_upstream: TlsUpstreamServer, tls_ca: trustme.CA
) -> None:
    """A connection's caCertificate makes its context trust the private CA (and only its)."""
    cache = ContextCache()
    context = cache.get("internal", 1, material_for(tls_ca))
    assert await fetch(session, tls_upstream.url(), context) == 401
    other = cache.get("public", 1, TlsMaterial())
    await tls_failure(session, tls_upstream.url(), other, "localhost")


async def test_wrong_host_name_is_refused_though_ca_trusted(
    session: aiohttp.ClientSession, wrong_name_upstream: TlsUpstreamServer, tls_ca: trustme.CA
) -> None:
    """A certificate from the trusted CA for another name is still a 502 upstream_tls_error."""
    context = build_context(material_for(tls_ca))
    error = await tls_failure(session, wrong_name_upstream.url(), context, "localhost")
    assert error.code == "upstream_tls_error"
    assert "not valid for this host name" in error.message
    assert len(wrong_name_upstream.requests()) == 0


async def test_sni_and_verification_use_the_url_name_while_the_socket_goes_to_the_address(
    internal_only_upstream: TlsUpstreamServer, tls_ca: trustme.CA
) -> None:
    """SNI and host-name checks use the URL's name; a pinned resolver picks the address."""
    resolver = StaticResolver({INTERNAL_NAME: "127.0.0.1"})
    connector = aiohttp.TCPConnector(resolver=resolver)
    context = build_context(material_for(tls_ca))
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as http:
        status = await fetch(http, internal_only_upstream.url(), context)
    assert status == 401
    assert resolver.asked == [INTERNAL_NAME]
    assert internal_only_upstream.sni_names[-1] == INTERNAL_NAME
    seen = internal_only_upstream.requests()[-1]
    assert seen.header("host") == f"{INTERNAL_NAME}:{internal_only_upstream.port}"
    # The same certificate by address: its name is not 127.0.0.1, so it is refused.
    async with aiohttp.ClientSession(trust_env=False) as http:
        error = await tls_failure(
            http, internal_only_upstream.url(host="127.0.0.1"), context, "127.0.0.1"
        )
    assert "not valid for this IP address" in error.message


async def test_mtls_upstream_refuses_without_client_certificate(
    session: aiohttp.ClientSession, mtls_upstream: TlsFront, tls_ca: trustme.CA
) -> None:
    """An upstream that requires a client certificate refuses a context without one."""
    before = len(mtls_upstream.requests())
    context = build_context(material_for(tls_ca))
    with pytest.raises((aiohttp.ClientError, ssl.SSLError)) as caught:
        await fetch(session, mtls_upstream.url(), context)
    error = tls_error_for(caught.value, "localhost")
    assert error is not None, repr(caught.value)
    assert error.code == "upstream_tls_error"
    assert error.message == (
        "TLS to upstream localhost failed: the upstream requires a client certificate"
    )
    assert len(mtls_upstream.requests()) == before


async def test_mtls_upstream_refuses_a_certificate_from_another_ca(
    session: aiohttp.ClientSession, mtls_upstream: TlsFront, tls_ca: trustme.CA
) -> None:
    """A client certificate the upstream does not trust is a 502 upstream_tls_error."""
    stranger = trustme.CA().issue_cert(common_name="stranger")
    material = material_for(tls_ca, stranger)
    context = build_context(material)
    before = len(mtls_upstream.requests())
    with pytest.raises((aiohttp.ClientError, ssl.SSLError)) as caught:
        await fetch(session, mtls_upstream.url(), context)
    error = tls_error_for(caught.value, "localhost")
    assert error is not None, repr(caught.value)
    assert "refused the handshake" in error.message
    assert len(mtls_upstream.requests()) == before


async def test_mtls_upstream_accepts_the_connection_identity(
    session: aiohttp.ClientSession,
    mtls_upstream: TlsFront,
    tls_ca: trustme.CA,
    client_identity: trustme.LeafCert,
) -> None:
    """With the connection's client certificate and key the mTLS upstream answers."""
    context = build_context(material_for(tls_ca, client_identity))
    assert await fetch(session, mtls_upstream.url(), context) == 401
    assert len(mtls_upstream.requests()) >= 1


async def test_connect_through_the_forward_proxy(
    tls_upstream: TlsUpstreamServer,
    tls_ca: trustme.CA,
    forward_proxy: ForwardProxy,
) -> None:
    """An https upstream is reached through the proxy with CONNECT (seen in its log)."""
    proxy = parse_upstream_proxy(forward_proxy.url_with())
    context = build_context(material_for(tls_ca))
    # Own session, closed before reading the log: proxy.py logs a tunnel when it ends.
    async with aiohttp.ClientSession(trust_env=False) as http:
        status = await fetch(http, tls_upstream.url(), context, **proxy.request_options())
    assert status == 401
    needle = f"CONNECT localhost:{tls_upstream.port}"
    assert needle in forward_proxy.wait_for_log(needle)
    # TLS ran end to end with the upstream inside the tunnel, on the URL's name.
    assert tls_upstream.sni_names[-1] == "localhost"


async def test_proxy_password_never_leaks(
    session: aiohttp.ClientSession,
    tls_upstream: TlsUpstreamServer,
    tls_ca: trustme.CA,
    forward_proxy: ForwardProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused proxy login: the password is in no repr, exception or log line."""
    import base64

    canary = forward_proxy.password + "-wrong"
    proxy = parse_upstream_proxy(forward_proxy.url_with(canary))
    forms = [canary, base64.b64encode(f"igris:{canary}".encode()).decode()]
    context = build_context(material_for(tls_ca))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(aiohttp.ClientError) as caught:
        await fetch(session, tls_upstream.url(), context, **proxy.request_options())
    assert isinstance(caught.value, aiohttp.ClientHttpProxyError)
    assert caught.value.status == 407
    texts = [repr(proxy), str(proxy), f"{proxy}", str(caught.value), caplog.text]
    for form in forms:
        for text in texts:
            assert form not in text
    assert tls_error_for(caught.value, "localhost") is None
