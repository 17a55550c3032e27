"""igris_mw._settings: every IGRIS_* variable, its default and its validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from igris_mw import IgrisGateway
from igris_mw._audit import JsonlAuditSink
from igris_mw._errors import ConfigurationError
from igris_mw._keyring import Keyring
from igris_mw._settings import Settings
from igris_mw.testing import FixedKeyring, MemoryStore

PACKAGE = Path(__file__).resolve().parent.parent / "igris_mw"
DOCS = Path(__file__).resolve().parent.parent / "docs"
KEY = FixedKeyring.environ()["IGRIS_MASTER_KEY"]


def test_defaults_with_an_empty_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing set: ./.igris, embedded SQLite, keyring:, 127.0.0.1:8080, 60 s, info."""
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({})
    assert s.home == tmp_path / ".igris"
    assert s.store is None
    assert s.store_url == f"sqlite:///{tmp_path / '.igris' / 'igris.db'}"
    assert s.crypto_url == "keyring:"
    assert s.audit is None
    assert (s.host, s.port, s.upstream_timeout, s.log_level) == ("127.0.0.1", 8080, 60.0, "info")
    assert s.public_url is None
    assert not s.master_key_configured
    assert s.default_audit_url == f"jsonl://{tmp_path / '.igris' / 'audit.jsonl'}"


def test_every_variable_is_read() -> None:
    """Each IGRIS_* variable lands in its field, parsed."""
    s = Settings.from_env(
        {
            "IGRIS_HOME": "/srv/igris",
            "IGRIS_STORE": "postgresql://db/igris",
            "IGRIS_CRYPTO": "transit://vault:8200/igris",
            "IGRIS_AUDIT": "jsonl:///var/log/igris.jsonl",
            "IGRIS_MASTER_KEY_FILE": "/run/secrets/master.key",
            "IGRIS_UPSTREAM_TIMEOUT": "2.5",
            "IGRIS_HOST": "0.0.0.0",
            "IGRIS_PORT": "9000",
            "IGRIS_PUBLIC_URL": "https://gw.example/",
            "IGRIS_LOG_LEVEL": "DEBUG",
        }
    )
    assert s.home == Path("/srv/igris")
    assert s.store_url == "postgresql://db/igris"
    assert s.crypto_url == "transit://vault:8200/igris"
    assert s.audit == "jsonl:///var/log/igris.jsonl"
    assert s.master_key_file == Path("/run/secrets/master.key")
    assert (s.upstream_timeout, s.host, s.port) == (2.5, "0.0.0.0", 9000)
    assert (s.public_url, s.log_level) == ("https://gw.example", "debug")


def test_empty_is_the_same_as_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """VAR= means unset, for every variable but IGRIS_MASTER_KEY (present: configured)."""
    monkeypatch.chdir(tmp_path)
    empty = dict.fromkeys(Settings.variables(), "")
    assert Settings.from_env(empty) == Settings.from_env({"IGRIS_MASTER_KEY": ""})
    del empty["IGRIS_MASTER_KEY"]
    assert Settings.from_env(empty) == Settings.from_env({})


BAD = [
    ("IGRIS_PORT", "http"),
    ("IGRIS_PORT", "0"),
    ("IGRIS_PORT", "65536"),
    ("IGRIS_UPSTREAM_TIMEOUT", "soon"),
    ("IGRIS_UPSTREAM_TIMEOUT", "0"),
    ("IGRIS_UPSTREAM_TIMEOUT", "-3"),
    ("IGRIS_UPSTREAM_TIMEOUT", "nan"),
    ("IGRIS_UPSTREAM_TIMEOUT", "inf"),
    ("IGRIS_LOG_LEVEL", "loud"),
    ("IGRIS_PUBLIC_URL", "gw.example"),
    ("IGRIS_PUBLIC_URL", "ftp://gw.example"),
]


@pytest.mark.parametrize(("name", "value"), BAD)
def test_bad_value_is_a_configuration_error_naming_the_variable(name: str, value: str) -> None:
    """An unusable value raises ConfigurationError (a ValueError) that names the variable."""
    with pytest.raises(ConfigurationError, match=name) as info:
        Settings.from_env({name: value})
    assert isinstance(info.value, ValueError)


@given(name=st.sampled_from(sorted(Settings.variables())), value=st.text(max_size=200))
def test_any_text_is_settings_or_a_named_error(name: str, value: str) -> None:
    """Whatever a variable holds (NUL, surrogates ...), the result is Settings or a
    ConfigurationError naming it; nothing else escapes."""
    error: ConfigurationError | None = None
    try:
        Settings.from_env({name: value})
    except ConfigurationError as exc:
        error = exc
    if error is not None:
        assert name in error.message


def test_url_passwords_are_never_in_the_repr() -> None:
    """repr(Settings) shows store, crypto and audit URLs without their user info."""
    s = Settings(
        store="postgresql://igris:St0rePw-canary@db:5432/igris",
        crypto="vault://t0ken-canary@vault:8200/transit",
        audit="postgresql://audit:Aud1tPw-canary@db/audit",
        rate_limit_store="redis://:Red1sPw-canary@cache:6379/0",
    )
    text = repr(s)
    for secret in ("St0rePw-canary", "t0ken-canary", "Aud1tPw-canary", "Red1sPw-canary"):
        assert secret not in text
    assert "***@db:5432" in text
    assert repr(Settings(store="sqlite:///x.db")).count("sqlite:///x.db") == 1


def test_master_key_is_never_in_the_repr() -> None:
    """repr(Settings) leaves the master key out."""
    s = Settings.from_env({"IGRIS_MASTER_KEY": KEY})
    assert s.master_key == KEY
    assert KEY not in repr(s)
    assert KEY not in str(s)


@pytest.mark.parametrize(
    ("env", "configured"),
    [
        ({}, False),
        ({"IGRIS_MASTER_KEY": ""}, True),
        ({"IGRIS_MASTER_KEY_FILE": ""}, False),
        ({"IGRIS_MASTER_KEY": KEY}, True),
        ({"IGRIS_MASTER_KEY_FILE": "/etc/igris/master.key"}, True),
    ],
)
def test_one_rule_for_a_configured_master_key(env: dict[str, str], configured: bool) -> None:
    """Configured: IGRIS_MASTER_KEY present (even empty) or IGRIS_MASTER_KEY_FILE non-empty."""
    assert Settings.from_env(env).master_key_configured is configured


def test_crypto_environ_fills_in_the_default_key_file_only_when_none_is_configured(
    tmp_path: Path,
) -> None:
    """<home>/master.key is used only with no key configured; other variables pass through."""
    home = tmp_path / "home"
    base = {"IGRIS_HOME": str(home), "VAULT_TOKEN": "t"}
    assert "IGRIS_MASTER_KEY_FILE" not in Settings.from_env(base).crypto_environ(base)
    key_file = home / "master.key"
    Keyring.generate_key_file(key_file)
    for env in (base, {**base, "IGRIS_MASTER_KEY_FILE": ""}):
        got = Settings.from_env(env).crypto_environ(env)
        assert got["IGRIS_MASTER_KEY_FILE"] == str(key_file)
        assert "IGRIS_MASTER_KEY" not in got
        assert got["VAULT_TOKEN"] == "t"
    # An empty IGRIS_MASTER_KEY stays, so the keyring refuses it rather than
    # silently falling back to another key.
    empty = {**base, "IGRIS_MASTER_KEY": ""}
    assert Settings.from_env(empty).crypto_environ(empty) == empty
    with pytest.raises(ConfigurationError, match="IGRIS_MASTER_KEY"):
        Keyring.from_env(Settings.from_env(empty).crypto_environ(empty))
    with_key = {**base, "IGRIS_MASTER_KEY": KEY}
    assert Settings.from_env(with_key).crypto_environ(with_key) == with_key
    other = {**base, "IGRIS_MASTER_KEY_FILE": str(tmp_path / "other.key")}
    got = Settings.from_env(other).crypto_environ(other)
    assert got["IGRIS_MASTER_KEY_FILE"] == str(tmp_path / "other.key")


def test_override_keeps_what_is_none() -> None:
    """Options that are None leave the environment's value in place."""
    s = Settings.from_env({"IGRIS_PORT": "9000", "IGRIS_STORE": "sqlite:///a.db"})
    t = s.override(port=None, store="sqlite:///b.db")
    assert (t.port, t.store) == (9000, "sqlite:///b.db")
    assert s.override(port=None) is s


def _igris_names_in(path: Path) -> set[str]:
    return set(re.findall(r"IGRIS_[A-Z][A-Z_]*[A-Z]", path.read_text(encoding="utf-8")))


def test_settings_owns_every_igris_variable_of_the_package() -> None:
    """Every IGRIS_* name in the package's source is a Settings variable."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        names |= _igris_names_in(path)
    assert names - set(Settings.variables()) == set()


def test_every_variable_is_documented() -> None:
    """docs/configuration.md names every IGRIS_* variable."""
    assert set(Settings.variables()) - _igris_names_in(DOCS / "configuration.md") == set()


def test_gateway_reads_the_environment_through_settings(tmp_path: Path) -> None:
    """IgrisGateway takes IGRIS_STORE, IGRIS_AUDIT and IGRIS_UPSTREAM_TIMEOUT from environ."""
    sink = tmp_path / "audit.jsonl"
    gw = IgrisGateway(
        None,
        crypto=FixedKeyring(),
        environ={
            "IGRIS_STORE": f"sqlite:///{tmp_path / 'gw.db'}",
            "IGRIS_AUDIT": f"jsonl://{sink}",
            "IGRIS_UPSTREAM_TIMEOUT": "7",
        },
    )
    assert isinstance(gw.service.audit, JsonlAuditSink)
    assert gw.forwarder.timeout == 7.0
    with pytest.raises(ConfigurationError, match="IGRIS_UPSTREAM_TIMEOUT"):
        IgrisGateway(None, store=MemoryStore(), environ={"IGRIS_UPSTREAM_TIMEOUT": "0"})
    with pytest.raises(ConfigurationError, match="IGRIS_STORE"):
        IgrisGateway(None, crypto=FixedKeyring(), environ={})


def test_home_of_an_unknown_user_is_a_named_error() -> None:
    """IGRIS_HOME='~nosuchuser' is a ConfigurationError naming IGRIS_HOME, not a RuntimeError."""
    with pytest.raises(ConfigurationError, match="IGRIS_HOME"):
        Settings.from_env({"IGRIS_HOME": "~0-no-such-user"})
