"""Session fixtures for the TLS tests: a throwaway CA, TLS upstreams, a forward proxy.

Everything is started once per test session on free loopback ports and
stopped at the end; nothing leaves this machine.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

# The helpers live next to this file and in tests/e2e; importlib mode puts nothing on sys.path.
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "e2e"))

from tls_harness import INTERNAL_NAME, ForwardProxy, TlsFront, TlsUpstreamServer, running


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    """The throwaway private CA every TLS upstream's certificate comes from."""
    return trustme.CA(organization_name="igris-mw test CA")


@pytest.fixture(scope="session")
def tls_ca_file(tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CA certificate as a PEM file (what IGRIS_UPSTREAM_CA_FILE names)."""
    path = tmp_path_factory.mktemp("tls-ca") / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def client_identity(tls_ca: trustme.CA) -> trustme.LeafCert:
    """A client certificate (and key) issued by the test CA."""
    return tls_ca.issue_cert(common_name="igris-gateway-client")


@pytest.fixture(scope="session")
def tls_upstream(tls_ca: trustme.CA) -> Iterator[TlsUpstreamServer]:
    """The MCP upstream over TLS, valid for localhost, 127.0.0.1 and mcp.internal.test."""
    cert = tls_ca.issue_cert("localhost", "127.0.0.1", INTERNAL_NAME)
    with running(TlsUpstreamServer(cert)) as server:
        yield server


@pytest.fixture(scope="session")
def mtls_upstream(tls_ca: trustme.CA) -> Iterator[TlsFront]:
    """The MCP upstream behind a TLS front that requires a client certificate from the CA."""
    cert = tls_ca.issue_cert("localhost", "127.0.0.1", INTERNAL_NAME)
    with running(TlsFront(cert, tls_ca)) as server:
        yield server


@pytest.fixture(scope="session")
def wrong_name_upstream(tls_ca: trustme.CA) -> Iterator[TlsUpstreamServer]:
    """A TLS upstream whose (trusted) certificate is for another host name."""
    cert = tls_ca.issue_cert("other.example.test")
    with running(TlsUpstreamServer(cert)) as server:
        yield server


@pytest.fixture(scope="session")
def internal_only_upstream(tls_ca: trustme.CA) -> Iterator[TlsUpstreamServer]:
    """A TLS upstream whose certificate names only mcp.internal.test (not localhost/127.0.0.1)."""
    cert = tls_ca.issue_cert(INTERNAL_NAME)
    with running(TlsUpstreamServer(cert, host=INTERNAL_NAME)) as server:
        yield server


@pytest.fixture(scope="session")
def forward_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForwardProxy]:
    """proxy.py with basic auth; its password is a canary the tests look for."""
    proxy = ForwardProxy(
        tmp_path_factory.mktemp("forward-proxy"),
        username="igris",
        password=f"proxy-canary-{secrets.token_hex(8)}",
    )
    proxy.start()
    yield proxy
    proxy.stop()
