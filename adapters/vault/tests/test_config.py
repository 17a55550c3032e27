"""Parsing vault://, openbao:// and vault-transit:// URLs and the Vault credentials."""

from __future__ import annotations

import pytest
from igris_mw_vault import TransitProvider, VaultKVStore
from igris_mw_vault._config import Credentials, parse_store_url, parse_transit_url

from igris_mw.errors import ConfigurationError

TOKEN = "hvs.SECRET-token-value-1234"
ENV = {"VAULT_TOKEN": TOKEN}


def test_store_url_parts() -> None:
    """Host, port, mount, prefix, TLS (on by default) and namespace come from the URL."""
    endpoint, mount, prefix, _ = parse_store_url("vault://vault.example:8201/kv/igris/prod", {})
    assert (endpoint.host, endpoint.port, endpoint.tls) == ("vault.example", 8201, True)
    assert endpoint.base_url == "https://vault.example:8201"
    assert (mount, prefix) == ("kv", "igris/prod")
    endpoint, mount, prefix, _ = parse_store_url("openbao://h/secret?tls=false&namespace=team", {})
    assert endpoint.base_url == "http://h:8200"
    assert endpoint.namespace == "team"
    assert (mount, prefix) == ("secret", "")


def test_namespace_from_environment() -> None:
    """VAULT_NAMESPACE is the default namespace and VAULT_CACERT the CA file."""
    env = {"VAULT_NAMESPACE": "ns1", "VAULT_CACERT": "/etc/ca.pem"}
    endpoint, _, _, _ = parse_store_url("vault://h/secret", env)
    assert endpoint.namespace == "ns1"
    assert endpoint.ca_file == "/etc/ca.pem"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("vault://h:notaport/secret", "bad host or port"),
        ("vault://h:8200", "names no KV v2 mount"),
        ("vault:///secret", "no host"),
        ("vault://h/secret?token=abc", "unknown option 'token'"),
        ("vault://h/secret?tls=maybe", "tls must be true or false"),
        ("vault://h/se cret", "not allowed"),
        ("vault://h/../secret", "not allowed"),
        ("http://h/secret", "scheme must be one of"),
    ],
)
def test_malformed_store_url_is_one_line(url: str, fragment: str) -> None:
    """A malformed store URL raises a one-line ConfigurationError naming the problem."""
    with pytest.raises(ConfigurationError) as info:
        VaultKVStore.from_url(url, ENV)
    assert fragment in info.value.message
    assert "\n" not in info.value.message


def test_token_in_url_refused_without_echo() -> None:
    """A URL with user info is refused, and the token in it is not repeated."""
    for url in (f"vault://{TOKEN}@h/secret", f"vault://x:{TOKEN}@h:8200/secret"):
        with pytest.raises(ConfigurationError) as info:
            VaultKVStore.from_url(url, ENV)
        assert "must not carry credentials" in info.value.message
        assert TOKEN not in str(info.value)


def test_transit_url_needs_mount_and_key() -> None:
    """vault-transit:// needs exactly a mount and a key name."""
    endpoint, mount, key, _ = parse_transit_url(
        "vault-transit://h:8300/transit/igris?tls=false", {}
    )
    assert (endpoint.base_url, mount, key) == ("http://h:8300", "transit", "igris")
    for bad in ("vault-transit://h/transit", "vault-transit://h/a/b/c"):
        with pytest.raises(ConfigurationError, match="must name a mount and a key"):
            TransitProvider.from_url(bad, ENV)


def test_missing_credentials_refused() -> None:
    """Without VAULT_TOKEN or an AppRole pair, from_url says which variables to set."""
    with pytest.raises(
        ConfigurationError, match="set VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID"
    ):
        VaultKVStore.from_url("vault://h/secret", {})
    with pytest.raises(ConfigurationError, match="VAULT_TOKEN"):
        TransitProvider.from_url("vault-transit://h/transit/k", {"VAULT_TOKEN": "  "})


def test_half_an_approle_pair_refused() -> None:
    """VAULT_ROLE_ID without VAULT_SECRET_ID (or the reverse) names the missing one."""
    with pytest.raises(ConfigurationError, match="needs VAULT_SECRET_ID"):
        Credentials.from_environ({"VAULT_ROLE_ID": "r"}, "vault://h/secret")
    with pytest.raises(ConfigurationError, match="needs VAULT_ROLE_ID"):
        Credentials.from_environ({"VAULT_SECRET_ID": "s"}, "vault://h/secret")


def test_approle_preferred_and_hidden() -> None:
    """With both set AppRole is used; repr shows no token, role id or secret id."""
    creds = Credentials.from_environ(
        {"VAULT_ROLE_ID": "role-AAA", "VAULT_SECRET_ID": "secret-BBB", "VAULT_TOKEN": TOKEN}, "x"
    )
    assert creds.method == "approle"
    text = repr(creds)
    assert "role-AAA" not in text
    assert "secret-BBB" not in text
    assert TOKEN not in repr(Credentials.from_environ(ENV, "x"))
