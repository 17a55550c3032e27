"""End to end over TLS: the official MCP SDK client through the gateway to TLS upstreams.

Every upstream is a real uvicorn (or blocking TLS front) server with a
certificate from a throwaway CA; every gateway is a real uvicorn server with
its own store. Nothing here mocks TLS.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any

import httpx
import pytest
import trustme
from e2e_harness import (
    MASTER_KEY,
    Gateway,
    api,
    client_headers,
    new_credential,
    new_slug,
    streamable_session,
)
from mcp.types import TextContent
from tls_harness import INTERNAL_NAME, ForwardProxy, TlsFront, TlsUpstreamServer, tls_gateway
from upstream import fingerprint

from igris_mw import IgrisGateway
from igris_mw._errors import ConfigurationError
from igris_mw._settings import Settings
from igris_mw.models import AuditEvent


def _text(result: object) -> str:
    content = result.content  # type: ignore[attr-defined]
    assert isinstance(content[0], TextContent)
    return content[0].text


def ca_pem(ca: trustme.CA) -> str:
    return ca.cert_pem.bytes().decode()


def identity_fields(leaf: trustme.LeafCert) -> dict[str, str]:
    return {
        "clientCertificate": "".join(b.bytes().decode() for b in leaf.cert_chain_pems),
        "clientKey": leaf.private_key_pem.bytes().decode(),
    }


async def create(
    gateway: Gateway,
    upstream: Any,
    *,
    host: str | None = None,
    **extra: Any,
) -> tuple[str, str]:
    """Create a bearer connection to ``upstream`` over the API; return (slug, credential)."""
    credential = new_credential("tls")
    upstream.accept(credential)
    slug = new_slug("tls")
    body = {
        "slug": slug,
        "name": f"tls {slug}",
        "upstreamUrl": upstream.url("/mcp", host),
        "authType": "bearer",
        "credential": credential,
        **extra,
    }
    response = await api(gateway, "POST", "/virtual-keys", body)
    assert response.status_code == 201, response.text
    return slug, credential


async def whoami(gateway: Gateway, slug: str) -> str:
    async with streamable_session(gateway.url(slug), client_headers(gateway.mcp_key)) as session:
        return _text(await session.call_tool("whoami", {}))


async def post(gateway: Gateway, slug: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=20) as http:
        return await http.post(
            gateway.url(slug),
            json={"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {}},
            headers={
                "Authorization": f"Bearer {gateway.mcp_key}",
                "Accept": "application/json, text/event-stream",
            },
        )


async def gateway_events(gateway: Gateway, slug: str) -> list[AuditEvent]:
    await gateway.gw.audit.flush()
    page = await gateway.gw.service.list_audit(slug, limit=200)
    return [e for e in page.items if e.kind == "gateway"]


async def test_connection_ca_certificate_lets_the_sdk_through(
    gw_plain: Gateway, tls_upstream: TlsUpstreamServer, tls_ca: trustme.CA
) -> None:
    """With the connection's caCertificate, the MCP SDK works through the gateway over TLS."""
    slug, credential = await create(gw_plain, tls_upstream, caCertificate=ca_pem(tls_ca))
    assert await whoami(gw_plain, slug) == fingerprint(credential)
    assert tls_upstream.guard.seen_with(credential)


async def test_global_ca_file_lets_the_sdk_through(
    gw_ca_file: Gateway, tls_upstream: TlsUpstreamServer
) -> None:
    """With upstream_ca_file (IGRIS_UPSTREAM_CA_FILE), a connection needs no CA of its own."""
    slug, credential = await create(gw_ca_file, tls_upstream)
    assert await whoami(gw_ca_file, slug) == fingerprint(credential)


async def test_untrusted_upstream_is_502_upstream_tls_error_and_audited(
    gw_plain: Gateway, tls_upstream: TlsUpstreamServer
) -> None:
    """Without the CA: 502 upstream_tls_error naming only the host, audited so, nothing sent."""
    slug, credential = await create(gw_plain, tls_upstream)
    response = await post(gw_plain, slug)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_tls_error"
    assert error["message"] == (
        "TLS to upstream localhost failed: "
        "the certificate's issuer is not trusted (configure its CA)"
    )
    assert str(tls_upstream.port) not in error["message"]
    assert not tls_upstream.guard.seen_with(credential)
    events = await gateway_events(gw_plain, slug)
    assert [(e.status, e.outcome) for e in events] == [(502, "upstream_tls_error")]


async def test_certificate_for_another_name_is_502_though_the_ca_is_trusted(
    gw_ca_file: Gateway, wrong_name_upstream: TlsUpstreamServer
) -> None:
    """A trusted CA's certificate for another host name: 502 upstream_tls_error."""
    slug, _ = await create(gw_ca_file, wrong_name_upstream)
    response = await post(gw_ca_file, slug)
    assert response.status_code == 502
    assert response.json()["error"] == {
        "code": "upstream_tls_error",
        "message": "TLS to upstream localhost failed: "
        "the certificate is not valid for this host name",
    }
    assert wrong_name_upstream.requests() == []


async def test_sni_and_verification_use_the_url_name_while_the_socket_goes_to_the_address(
    gw_internal: Gateway, internal_only_upstream: TlsUpstreamServer, tls_ca: trustme.CA
) -> None:
    """The socket goes to the resolved address; SNI, verification and Host use the URL's name."""
    slug, credential = await create(
        gw_internal, internal_only_upstream, caCertificate=ca_pem(tls_ca)
    )
    assert await whoami(gw_internal, slug) == fingerprint(credential)
    assert set(internal_only_upstream.sni_names) == {INTERNAL_NAME}
    seen = internal_only_upstream.guard.seen_with(credential)
    assert seen
    assert {r.header("host") for r in seen} == {f"{INTERNAL_NAME}:{internal_only_upstream.port}"}


async def test_mtls_upstream_refuses_a_connection_without_client_certificate(
    gw_plain: Gateway, mtls_upstream: TlsFront, tls_ca: trustme.CA
) -> None:
    """An upstream requiring a client certificate: 502 upstream_tls_error without one."""
    slug, credential = await create(gw_plain, mtls_upstream, caCertificate=ca_pem(tls_ca))
    response = await post(gw_plain, slug)
    assert response.status_code == 502
    assert response.json()["error"] == {
        "code": "upstream_tls_error",
        "message": "TLS to upstream localhost failed: the upstream requires a client certificate",
    }
    assert not mtls_upstream.backend.guard.seen_with(credential)


async def test_mtls_works_with_the_connection_identity_and_rotation_takes_effect(
    gw_plain: Gateway, mtls_upstream: TlsFront, tls_ca: trustme.CA
) -> None:
    """The connection's client certificate opens the mTLS upstream; a rotated key is used next."""
    first = tls_ca.issue_cert(common_name="igris-client-one")
    slug, credential = await create(
        gw_plain, mtls_upstream, caCertificate=ca_pem(tls_ca), **identity_fields(first)
    )
    assert await whoami(gw_plain, slug) == fingerprint(credential)
    assert mtls_upstream.client_names[-1] == "igris-client-one"

    second = tls_ca.issue_cert(common_name="igris-client-two")
    rotated = await api(gw_plain, "POST", f"/virtual-keys/{slug}/rotate", identity_fields(second))
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["credentialVersion"] == 2
    assert await whoami(gw_plain, slug) == fingerprint(credential)  # the credential is kept
    assert mtls_upstream.client_names[-1] == "igris-client-two"

    stranger = trustme.CA().issue_cert(common_name="igris-client-stranger")
    rotated = await api(gw_plain, "POST", f"/virtual-keys/{slug}/rotate", identity_fields(stranger))
    assert rotated.status_code == 200, rotated.text
    response = await post(gw_plain, slug)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_tls_error"


async def test_client_key_never_leaks(
    gw_plain: Gateway,
    mtls_upstream: TlsFront,
    tls_ca: trustme.CA,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client key is in no response, log line, audit event or byte of the database."""
    caplog.set_level(logging.DEBUG)
    leaf = tls_ca.issue_cert(common_name="igris-canary-client")
    fields = identity_fields(leaf)
    key_lines = [line for line in fields["clientKey"].splitlines() if "-----" not in line]
    texts: list[str] = []

    async def call(method: str, path: str, body: Any = None) -> httpx.Response:
        response = await api(gw_plain, method, path, body)
        texts.append(f"{response.status_code} {response.headers} {response.text}")
        return response

    slug, _ = await create(gw_plain, mtls_upstream, caCertificate=ca_pem(tls_ca), **fields)
    read = await call("GET", f"/virtual-keys/{slug}")
    assert read.json()["clientCertificate"] == fields["clientCertificate"]
    assert read.json()["caCertificate"] == ca_pem(tls_ca)
    assert "clientKey" not in read.json()
    await call("GET", "/virtual-keys?limit=200")
    await call("PATCH", f"/virtual-keys/{slug}", {"clientKey": fields["clientKey"]})
    await call("PATCH", f"/virtual-keys/{slug}", {"upstreamUrl": mtls_upstream.url("/mcp/")})
    other = tls_ca.issue_cert(common_name="someone-else")
    mismatch = await call(
        "POST",
        f"/virtual-keys/{slug}/rotate",
        {
            "clientCertificate": identity_fields(other)["clientCertificate"],
            "clientKey": fields["clientKey"],
        },
    )
    assert mismatch.status_code == 422
    assert mismatch.json()["error"]["field"] == "clientKey"
    await call("POST", f"/virtual-keys/{slug}/rotate", fields)
    response = await post(gw_plain, slug)
    texts.append(response.text)
    await call("GET", f"/virtual-keys/{slug}/audit?limit=200")
    await gw_plain.gw.audit.flush()
    page = await gw_plain.gw.service.list_audit(slug, limit=200)
    texts.extend(json.dumps(e.to_json()) for e in page.items)
    texts.append(caplog.text)
    database = b"".join(path.read_bytes() for path in gw_plain.db_path.parent.glob("igris.db*"))
    for line in key_lines:
        assert line.encode() not in database
        for text in texts:
            assert line not in text


async def test_connect_through_the_forward_proxy(
    gw_proxy: Gateway, tls_upstream: TlsUpstreamServer, forward_proxy: ForwardProxy
) -> None:
    """With upstream_proxy, the SDK's requests reach the https upstream through CONNECT."""
    slug, credential = await create(gw_proxy, tls_upstream)
    assert await whoami(gw_proxy, slug) == fingerprint(credential)
    # proxy.py logs a tunnel when it closes: end the gateway's pooled connections.
    await gw_proxy.gw.forwarder.close()
    await gw_proxy.gw.forwarder.start()
    needle = f"CONNECT localhost:{tls_upstream.port}"
    assert needle in forward_proxy.wait_for_log(needle)


async def test_proxy_credentials_never_leak(
    tmp_path_factory: pytest.TempPathFactory,
    tls_upstream: TlsUpstreamServer,
    tls_ca_file: Any,
    forward_proxy: ForwardProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused proxy login is 502 naming the proxy's status; its password is nowhere."""
    caplog.set_level(logging.DEBUG)
    wrong = forward_proxy.password + "-wrong"
    forms = [wrong, base64.b64encode(f"{forward_proxy.username}:{wrong}".encode()).decode()]
    async with tls_gateway(
        tmp_path_factory.mktemp("gw-bad-proxy"),
        upstream_ca_file=tls_ca_file,
        upstream_proxy=forward_proxy.url_with(wrong),
    ) as gateway:
        slug, credential = await create(gateway, tls_upstream)
        response = await post(gateway, slug)
        assert response.status_code == 502
        assert response.json()["error"] == {
            "code": "upstream_unreachable",
            "message": f"upstream localhost:{tls_upstream.port} is unreachable or broken: "
            "the forward proxy answered 407",
        }
        assert not tls_upstream.guard.seen_with(credential)
        texts = [response.text, str(response.headers), caplog.text, repr(gateway.gw.forwarder)]
        texts.append(repr(gateway.gw.forwarder.proxy))
        await gateway.gw.audit.flush()
        page = await gateway.gw.service.list_audit(slug, limit=200)
        texts.extend(json.dumps(e.to_json()) for e in page.items)
        for form in forms:
            for text in texts:
                assert form not in text


def test_bad_settings_are_configuration_errors_without_the_password(tmp_path: Any) -> None:
    """A proxy URL with a path, or an unreadable CA file, stops the gateway with a clear error."""
    secret = "pr0xy-pa55w0rd-canary"
    with pytest.raises(ConfigurationError) as caught:
        IgrisGateway(
            store="memory://",
            environ={
                "IGRIS_MASTER_KEY": MASTER_KEY,
                "IGRIS_UPSTREAM_PROXY": f"http://u:{secret}@proxy:3128/path",
            },
        )
    assert "IGRIS_UPSTREAM_PROXY" in str(caught.value)
    assert secret not in str(caught.value)
    settings = Settings.from_env({"IGRIS_UPSTREAM_PROXY": f"http://u:{secret}@proxy:3128"})
    assert settings.upstream_proxy is not None
    assert secret not in repr(settings)
    with pytest.raises(ConfigurationError) as caught:
        IgrisGateway(
            store="memory://",
            environ={"IGRIS_MASTER_KEY": MASTER_KEY},
            upstream_ca_file=tmp_path / "missing.pem",
        )
    assert "cannot read the CA file" in str(caught.value)


async def test_process_proxy_environment_is_ignored(
    tmp_path_factory: pytest.TempPathFactory,
    tls_upstream: TlsUpstreamServer,
    tls_ca: trustme.CA,
    forward_proxy: ForwardProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTP(S)_PROXY in the environment is not used: requests go direct, not via the proxy."""
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, forward_proxy.url_with())
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with tls_gateway(tmp_path_factory.mktemp("gw-env-proxy")) as gateway:
        assert gateway.gw.forwarder.proxy is None
        slug, credential = await create(gateway, tls_upstream, caCertificate=ca_pem(tls_ca))
        log_before = forward_proxy.log().count("CONNECT")
        assert await whoami(gateway, slug) == fingerprint(credential)
    await asyncio.sleep(0.2)
    assert forward_proxy.log().count("CONNECT") == log_before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"caCertificate": "not a pem"}, "caCertificate"),
        (
            {"clientCertificate": "-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----"},
            "clientKey",
        ),
        (
            {"clientKey": "-----BEGIN PRIVATE KEY-----\nAA\n-----END PRIVATE KEY-----"},
            "clientCertificate",
        ),
        (
            {
                "clientCertificate": "-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----",
                "clientKey": "-----BEGIN PRIVATE KEY-----\nAA\n-----END PRIVATE KEY-----",
            },
            "clientCertificate",
        ),
    ],
)
async def test_create_with_bad_tls_material_is_422_and_stores_nothing(
    gw_plain: Gateway, tls_upstream: TlsUpstreamServer, body: dict[str, str], field: str
) -> None:
    """Bad PEM material is 422 naming the field; the connection is not created."""
    slug = new_slug("bad-tls")
    response = await api(
        gw_plain,
        "POST",
        "/virtual-keys",
        {
            "slug": slug,
            "name": "bad",
            "upstreamUrl": tls_upstream.url(),
            "authType": "none",
            **body,
        },
    )
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field
    assert (await api(gw_plain, "GET", f"/virtual-keys/{slug}")).status_code == 404


async def test_ca_certificate_can_be_patched_and_removed(
    gw_plain: Gateway, tls_upstream: TlsUpstreamServer, tls_ca: trustme.CA
) -> None:
    """PATCH caCertificate takes effect on the next request; null removes it."""
    slug, credential = await create(gw_plain, tls_upstream)
    assert (await post(gw_plain, slug)).status_code == 502
    patched = await api(
        gw_plain, "PATCH", f"/virtual-keys/{slug}", {"caCertificate": ca_pem(tls_ca)}
    )
    assert patched.status_code == 200
    assert patched.json()["caCertificate"] == ca_pem(tls_ca)
    assert await whoami(gw_plain, slug) == fingerprint(credential)
    removed = await api(gw_plain, "PATCH", f"/virtual-keys/{slug}", {"caCertificate": None})
    assert removed.json()["caCertificate"] is None
    assert (await post(gw_plain, slug)).json()["error"]["code"] == "upstream_tls_error"


async def test_warm_requests_reuse_one_context(
    gw_plain: Gateway, tls_upstream: TlsUpstreamServer, tls_ca: trustme.CA
) -> None:
    """The SSL context is built once per connection version, not per request."""
    slug, _ = await create(gw_plain, tls_upstream, caCertificate=ca_pem(tls_ca))
    await post(gw_plain, slug)
    found = await gw_plain.gw.resolver.connection(slug)
    first = found.target.ssl  # type: ignore[union-attr]
    assert first is not None
    for _ in range(3):
        await post(gw_plain, slug)
    again = await gw_plain.gw.resolver.connection(slug)
    assert again.target.ssl is first  # type: ignore[union-attr]


async def test_sdk_client_sets_tls_fields_and_rotates_the_identity(
    gw_plain: Gateway, mtls_upstream: TlsFront, tls_ca: trustme.CA
) -> None:
    """AsyncIgrisClient creates, reads, rotates and removes the TLS fields; MCP works over mTLS."""
    from igris_mw.client import AsyncIgrisClient

    first = identity_fields(tls_ca.issue_cert(common_name="sdk-one"))
    second = identity_fields(tls_ca.issue_cert(common_name="sdk-two"))
    credential = new_credential("sdk")
    mtls_upstream.accept(credential)
    slug = new_slug("sdk-tls")
    async with AsyncIgrisClient(gw_plain.base_url, gw_plain.admin_key) as client:
        created = await client.create_connection(
            slug,
            "sdk",
            mtls_upstream.url(),
            credential=credential,
            ca_certificate=ca_pem(tls_ca),
            client_certificate=first["clientCertificate"],
            client_key=first["clientKey"],
        )
        assert created["clientCertificate"] == first["clientCertificate"]
        assert "clientKey" not in created
        assert await whoami(gw_plain, slug) == fingerprint(credential)
        rotated = await client.rotate_credential(
            slug, client_certificate=second["clientCertificate"], client_key=second["clientKey"]
        )
        assert rotated["credentialVersion"] == 2
        assert await whoami(gw_plain, slug) == fingerprint(credential)
        assert mtls_upstream.client_names[-1] == "sdk-two"
        removed = await client.update_connection(slug, client_certificate=None)
        assert removed["clientCertificate"] is None
    assert (await post(gw_plain, slug)).json()["error"]["code"] == "upstream_tls_error"
