"""Contract, second part: TLS to upstreams, private CAs, client certificates, forward proxy."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from contract_harness import Served, error_of, serve

sys.path.insert(0, str(Path(__file__).parent.parent / "tls"))

from tls_harness import ForwardProxy, TlsFront, TlsUpstreamServer, running

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "contract", "version": "1"},
    },
}
ACCEPT = {"Accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA(organization_name="contract test CA")


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("contract-ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="module")
def tls_up(ca: trustme.CA) -> Iterator[TlsUpstreamServer]:
    with running(TlsUpstreamServer(ca.issue_cert("localhost", "127.0.0.1"))) as server:
        yield server


def _init(gw: Served, url: str, key: str | None = None) -> httpx.Response:
    return httpx.post(url, headers=gw.h(key, **ACCEPT), json=INIT, timeout=15)


def test_untrusted_certificate_is_502_upstream_tls_error(
    gw: Served, tls_up: TlsUpstreamServer
) -> None:
    """A certificate from an unknown CA: 502 upstream_tls_error naming the host; nothing sent."""
    c = gw.create_connection(None, upstreamUrl=tls_up.url("/mcp"))
    tls_up.accept(c["_credential"])
    before = len(tls_up.requests())
    err = error_of(_init(gw, c["gatewayUrl"]), 502, "upstream_tls_error")
    assert "localhost" in err["message"]
    assert len(tls_up.requests()) == before


def test_wrong_host_name_is_upstream_tls_error(gw: Served, ca: trustme.CA) -> None:
    """A trusted certificate for another name is refused too (host name verified)."""
    with running(TlsUpstreamServer(ca.issue_cert("other.example"))) as up:
        c = gw.create_connection(
            None, upstreamUrl=up.url("/mcp"), caCertificate=ca.cert_pem.bytes().decode()
        )
        error_of(_init(gw, c["gatewayUrl"]), 502, "upstream_tls_error")


def test_connection_ca_certificate(gw: Served, ca: trustme.CA, tls_up: TlsUpstreamServer) -> None:
    """caCertificate on a connection trusts that CA for it; it is returned on read."""
    pem = ca.cert_pem.bytes().decode()
    c = gw.create_connection(None, upstreamUrl=tls_up.url("/mcp"), caCertificate=pem)
    tls_up.accept(c["_credential"])
    assert gw.api("GET", f"/api/v1/virtual-keys/{c['slug']}").json()["caCertificate"] == pem
    r = _init(gw, c["gatewayUrl"])
    assert r.status_code == 200, r.text


def test_invalid_ca_certificate_is_422(gw: Served) -> None:
    """A caCertificate that is not PEM is 422 naming it."""
    body = {
        "slug": "bad-ca-pem",
        "name": "x",
        "upstreamUrl": "https://a.example/",
        "credential": "c",
        "caCertificate": "not a certificate",
    }
    err = error_of(gw.api("POST", "/api/v1/virtual-keys", json=body), 422)
    assert "caCertificate" in err["message"] or err.get("field") == "caCertificate"


def test_client_certificate_mtls(gw: Served, ca: trustme.CA) -> None:
    """clientCertificate + clientKey give mTLS; the certificate is returned, the key never."""
    ident = ca.issue_cert(common_name="contract-client")
    cert_pem = b"".join(b.bytes() for b in ident.cert_chain_pems).decode()
    key_pem = ident.private_key_pem.bytes().decode()
    with running(TlsFront(ca.issue_cert("localhost", "127.0.0.1"), ca)) as front:
        c = gw.create_connection(
            None,
            upstreamUrl=front.url("/mcp"),
            caCertificate=ca.cert_pem.bytes().decode(),
            clientCertificate=cert_pem,
            clientKey=key_pem,
        )
        front.accept(c["_credential"])
        read = gw.api("GET", f"/api/v1/virtual-keys/{c['slug']}")
        assert read.json()["clientCertificate"] == cert_pem
        assert "clientKey" not in read.json()
        assert "PRIVATE KEY" not in read.text
        r = _init(gw, c["gatewayUrl"])
        assert r.status_code == 200, r.text
        assert "contract-client" in front.client_names
        # without the client identity the upstream refuses the handshake
        bare = gw.create_connection(
            None, upstreamUrl=front.url("/mcp"), caCertificate=ca.cert_pem.bytes().decode()
        )
        assert _init(gw, bare["gatewayUrl"]).status_code == 502
        rotated = gw.api(
            "POST",
            f"/api/v1/virtual-keys/{c['slug']}/rotate",
            json={"clientCertificate": cert_pem, "clientKey": key_pem},
        )
        assert rotated.status_code == 200, rotated.text
        assert "PRIVATE KEY" not in rotated.text
        audit = gw.api("GET", f"/api/v1/virtual-keys/{c['slug']}/audit").text
        assert "PRIVATE KEY" not in audit
    assert "PRIVATE KEY" not in gw.log_text()


def test_upstream_ca_file_flag_and_env(
    tmp_path_factory: pytest.TempPathFactory, ca_file: Path, tls_up: TlsUpstreamServer
) -> None:
    """--upstream-ca-file and IGRIS_UPSTREAM_CA_FILE trust a private CA for every connection."""
    for args, env in (
        ((("--upstream-ca-file", str(ca_file))), {}),
        ((), {"IGRIS_UPSTREAM_CA_FILE": str(ca_file)}),
    ):
        home = tmp_path_factory.mktemp("contract-cafile") / "home"
        with serve(home, *args, env=env) as s:
            c = s.create_connection(None, upstreamUrl=tls_up.url("/mcp"))
            tls_up.accept(c["_credential"])
            r = _init(s, c["gatewayUrl"])
            assert r.status_code == 200, r.text


def test_upstream_proxy_with_credentials(
    tmp_path_factory: pytest.TempPathFactory, ca_file: Path, tls_up: TlsUpstreamServer
) -> None:
    """--upstream-proxy sends upstream traffic through the proxy; its password is never shown."""
    proxy_dir = tmp_path_factory.mktemp("contract-proxy")
    password = "proxy-pw-canary-71"
    with running(ForwardProxy(proxy_dir, username="u", password=password)) as proxy:
        home = tmp_path_factory.mktemp("contract-proxied") / "home"
        with serve(
            home, "--upstream-ca-file", str(ca_file), env={"IGRIS_UPSTREAM_PROXY": proxy.url_with()}
        ) as s:
            c = s.create_connection(None, upstreamUrl=tls_up.url("/mcp"))
            tls_up.accept(c["_credential"])
            r = _init(s, c["gatewayUrl"])
            assert r.status_code == 200, r.text
            assert password not in s.log_text()
        home2 = tmp_path_factory.mktemp("contract-proxied-bad") / "home"
        with serve(
            home2,
            "--upstream-proxy",
            proxy.url_with("wrong-pw-canary"),
            "--upstream-ca-file",
            str(ca_file),
        ) as s:
            c = s.create_connection(None, upstreamUrl=tls_up.url("/mcp"))
            r = _init(s, c["gatewayUrl"])
            assert r.status_code == 502  # the proxy refused the password: it was in the path
            assert "wrong-pw-canary" not in r.text
            assert "wrong-pw-canary" not in s.log_text()


def test_process_https_proxy_env_is_ignored(
    tmp_path_factory: pytest.TempPathFactory, ca_file: Path, tls_up: TlsUpstreamServer
) -> None:
    """HTTPS_PROXY / HTTP_PROXY in the environment are not used without the setting."""
    home = tmp_path_factory.mktemp("contract-noproxy") / "home"
    dead = "http://127.0.0.1:9"
    with serve(
        home,
        "--upstream-ca-file",
        str(ca_file),
        env={"HTTPS_PROXY": dead, "HTTP_PROXY": dead, "https_proxy": dead, "http_proxy": dead},
    ) as s:
        c = s.create_connection(None, upstreamUrl=tls_up.url("/mcp"))
        tls_up.accept(c["_credential"])
        assert _init(s, c["gatewayUrl"]).status_code == 200
