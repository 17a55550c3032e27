"""Session fixtures for the TLS tests: a throwaway CA, TLS upstreams, a forward proxy.

Everything is started once per test session on free loopback ports and
stopped at the end; nothing leaves this machine.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme

# The helpers live next to this file and in tests/e2e; importlib mode puts nothing on sys.path.
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "e2e"))

from e2e_harness import Gateway
from tls_harness import (
    INTERNAL_NAME,
    ForwardProxy,
    StaticResolver,
    TlsFront,
    TlsUpstreamServer,
    running,
    tls_gateway,
)


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


@pytest.fixture(scope="session")
async def gw_plain(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    """A gateway with no CA file: only the system CAs and connections' own CAs."""
    async with tls_gateway(tmp_path_factory.mktemp("gw-plain")) as gateway:
        yield gateway


@pytest.fixture(scope="session")
async def gw_ca_file(
    tmp_path_factory: pytest.TempPathFactory, tls_ca_file: Path
) -> AsyncIterator[Gateway]:
    """A gateway started with upstream_ca_file (IGRIS_UPSTREAM_CA_FILE) = the test CA."""
    async with tls_gateway(
        tmp_path_factory.mktemp("gw-ca"), upstream_ca_file=tls_ca_file
    ) as gateway:
        yield gateway


@pytest.fixture(scope="session")
async def gw_internal(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    """A gateway whose connector resolves mcp.internal.test to 127.0.0.1 (a pinned address)."""
    resolver = StaticResolver({INTERNAL_NAME: "127.0.0.1", "localhost": "127.0.0.1"})
    async with tls_gateway(tmp_path_factory.mktemp("gw-internal"), resolver=resolver) as gateway:
        yield gateway


@pytest.fixture(scope="session")
async def gw_proxy(
    tmp_path_factory: pytest.TempPathFactory, tls_ca_file: Path, forward_proxy: ForwardProxy
) -> AsyncIterator[Gateway]:
    """A gateway sending all upstream traffic through the forward proxy (with its password)."""
    async with tls_gateway(
        tmp_path_factory.mktemp("gw-proxy"),
        upstream_ca_file=tls_ca_file,
        upstream_proxy=forward_proxy.url_with(),
    ) as gateway:
        yield gateway
