"""Every ``IGRIS_*`` environment variable, its default and its validation.

The CLI, ``serve`` and ``IgrisGateway`` all read their configuration through
``Settings.from_env`` and nothing else reads ``IGRIS_*`` names, so a
variable means the same thing everywhere (``docs/configuration.md`` is the
user's table of them). Options given in code or on the command line win over
the environment: ``settings.override(store=..., port=...)`` keeps every
value that is ``None``.

Rules that hold for every variable:

* set to the empty string is the same as unset (shells and compose files
  write ``VAR=`` to mean "nothing"), except ``IGRIS_MASTER_KEY``: a master
  key variable that is present but empty is an error when the key is used
  (a missing secret in a deployment must stop it, never let ``serve``
  generate a new key beside an existing store);
* a value that cannot be used is a ``ConfigurationError`` (a ``ValueError``)
  whose message names the variable and never echoes a secret.

A new setting is one field:
``name: T = attrs.field(default=..., metadata=_env("IGRIS_...", parser))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from ._errors import ConfigurationError

__all__ = [
    "AUDIT_FAILURE_MODES",
    "DEFAULT_CRYPTO",
    "DEFAULT_HOME",
    "ENV_MASTER_KEY",
    "ENV_MASTER_KEY_FILE",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "Settings",
]

DEFAULT_HOME = ".igris"
DEFAULT_CRYPTO = "keyring:"
ENV_MASTER_KEY = "IGRIS_MASTER_KEY"
ENV_MASTER_KEY_FILE = "IGRIS_MASTER_KEY_FILE"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
LOG_FORMATS = ("text", "json")

_Parser = Callable[[str, str], Any]


# -- parsers: (variable name, non-empty raw value) -> value ------------------


def _text(name: str, raw: str) -> str:
    return raw


def _url_repr(url: str | None) -> str:
    """A store, crypto or audit URL for a repr: no password (postgresql://u:pw@...)."""
    if url is None:
        return "None"
    try:
        parts = urlsplit(url)
        if parts.password is None and "@" not in parts.netloc:
            return repr(url)
        host = parts.netloc.rsplit("@", 1)[-1]
        return repr(parts._replace(netloc=f"***@{host}").geturl())
    except ValueError:
        return "'<unparseable URL>'"


def _path(name: str, raw: str) -> Path:
    if "\0" in raw:
        raise ConfigurationError(f"{name} holds a NUL character")
    try:
        # expanduser raises RuntimeError for "~someone" who does not exist.
        return Path(raw).expanduser().absolute()
    except RuntimeError:
        raise ConfigurationError(f"{name} names a home directory that does not exist") from None


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


def _port(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a TCP port number, got {raw!r}") from None
    if not 0 < value < 65536:
        raise ConfigurationError(f"{name} must be a TCP port from 1 to 65535, got {value}")
    return value


def _count(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise ConfigurationError(f"{name} must be at least 1, got {value}")
    return value


def _log_level(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in LOG_LEVELS:
        raise ConfigurationError(f"{name} must be one of {', '.join(LOG_LEVELS)}, got {raw!r}")
    return value


def _log_format(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in LOG_FORMATS:
        raise ConfigurationError(f"{name} must be one of {', '.join(LOG_FORMATS)}, got {raw!r}")
    return value


def _http_url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(
            f"{name} must be an http:// or https:// URL such as https://gw.example, got {raw!r}"
        )
    return raw.rstrip("/")


AUDIT_FAILURE_MODES = ("closed", "open")
_SIZE_UNITS = {
    "": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30,
}  # fmt: skip


def _audit_failure(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in AUDIT_FAILURE_MODES:
        raise ConfigurationError(f"{name} must be 'closed' or 'open', got {raw!r}")
    return value


def _size(name: str, raw: str) -> int:
    text = raw.strip().lower()
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(digits) :].strip()
    try:
        value = int(digits.strip()) * _SIZE_UNITS[unit]
    except (ValueError, KeyError):
        raise ConfigurationError(
            f"{name} must be a size in bytes such as 1073741824, 512MiB or 1GiB, got {raw!r}"
        ) from None
    if value <= 0:
        raise ConfigurationError(f"{name} must be a positive size, got {raw!r}")
    return value


def _byte_count(name: str, raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigurationError(f"{name} must be a number of bytes, got {raw!r}") from None
    if value <= 0:
        raise ConfigurationError(f"{name} must be a positive number of bytes, got {raw!r}")
    return value


def _networks(name: str, raw: str) -> tuple[str, ...]:
    from ._policy.egress import parse_networks

    try:
        return tuple(str(n) for n in parse_networks(raw))
    except ConfigurationError as exc:
        raise ConfigurationError(f"{name}: {exc.message}") from None


def _master_key(name: str, raw: str) -> str:
    # Validated by the keyring when it is used, which names the bad entry
    # by position; a message here could only leak the value.
    return raw


def _env(variable: str, parser: _Parser, *, keep_empty: bool = False) -> dict[str, Any]:
    """The metadata of a settings field read from ``variable`` through ``parser``."""
    return {"env": variable, "parse": parser, "keep_empty": keep_empty}


def _default_home() -> Path:
    return Path(DEFAULT_HOME).absolute()


@attrs.frozen
class Settings:
    """The configuration of one igris-mw process, from the environment.

    Attributes:
        home: the data directory (``IGRIS_HOME``, default ``./.igris``): the
            embedded store, the generated master key, the audit spill file
            and the default JSON-lines audit sink live here.
        store: ``IGRIS_STORE``; ``None`` means the embedded SQLite store.
        crypto: ``IGRIS_CRYPTO``; ``None`` means ``keyring:``.
        audit: ``IGRIS_AUDIT``, a separate audit sink URL; ``None`` means
            the store itself when it keeps audit events.
        master_key: ``IGRIS_MASTER_KEY`` (never in a repr).
        master_key_file: ``IGRIS_MASTER_KEY_FILE``.
        upstream_timeout: ``IGRIS_UPSTREAM_TIMEOUT`` seconds (default 60).
        upstream_ca_file: ``IGRIS_UPSTREAM_CA_FILE``, CA certificates (PEM)
            trusted for every https upstream besides the system's.
        upstream_proxy: ``IGRIS_UPSTREAM_PROXY``, ``http://[user:pass@]host:port``
            of a forward proxy (never in a repr; parsed and checked by the
            gateway, whose errors never show the password).
        host, port: where ``serve`` listens (``IGRIS_HOST``, ``IGRIS_PORT``).
        public_url: ``IGRIS_PUBLIC_URL``, the base of ``gatewayUrl``.
        log_level: ``IGRIS_LOG_LEVEL`` for ``serve`` (default ``info``).
        audit_failure: ``IGRIS_AUDIT_FAILURE``, ``closed`` (default: refuse
            gateway requests with 503 ``audit_unavailable`` when the audit can
            record nothing more) or ``open`` (serve them, drop their events).
        audit_spill_max: ``IGRIS_AUDIT_SPILL_MAX``, the bound on the audit
            spill file in bytes (default 1 GiB; ``512MiB`` style accepted).
        log_format: ``IGRIS_LOG_FORMAT`` for ``serve``: ``text`` (default) or ``json``.
        metrics_host, metrics_port: where ``serve`` answers ``GET /metrics``
            (``IGRIS_METRICS_HOST``, default 127.0.0.1; ``IGRIS_METRICS_PORT``,
            default none: no metrics listener).
        allow_upstream_networks: ``IGRIS_ALLOW_UPSTREAM_NETWORKS``, CIDRs that
            upstreams may reach although internal (``docs/security.md``).
        max_request_body: ``IGRIS_MAX_REQUEST_BODY`` bytes (default 8 MiB).
        stream_idle_timeout: ``IGRIS_STREAM_IDLE_TIMEOUT`` seconds (default 300).
        max_stale: ``IGRIS_MAX_STALE`` seconds a cached key or connection is
            served while the store cannot be reached (default 60).
        rate_limit_store: ``IGRIS_RATE_LIMIT_STORE`` (``redis://host:port/db``)
            to share rate-limit buckets across replicas; ``None``: per process.
        auth_failures_per_minute: ``IGRIS_AUTH_FAILURES_PER_MINUTE``, failed
            authentications one client address may make in a minute (default 30).
        workers: ``IGRIS_WORKERS``, processes ``serve`` runs on its port (default 1).
    """

    home: Path = attrs.field(factory=_default_home, metadata=_env("IGRIS_HOME", _path))
    store: str | None = attrs.field(
        default=None, repr=_url_repr, metadata=_env("IGRIS_STORE", _text)
    )
    crypto: str | None = attrs.field(
        default=None, repr=_url_repr, metadata=_env("IGRIS_CRYPTO", _text)
    )
    audit: str | None = attrs.field(
        default=None, repr=_url_repr, metadata=_env("IGRIS_AUDIT", _text)
    )
    master_key: str | None = attrs.field(
        default=None, repr=False, metadata=_env(ENV_MASTER_KEY, _master_key, keep_empty=True)
    )
    master_key_file: Path | None = attrs.field(
        default=None, metadata=_env(ENV_MASTER_KEY_FILE, _path)
    )
    upstream_timeout: float = attrs.field(
        default=60.0, metadata=_env("IGRIS_UPSTREAM_TIMEOUT", _seconds)
    )
    upstream_ca_file: Path | None = attrs.field(
        default=None, metadata=_env("IGRIS_UPSTREAM_CA_FILE", _path)
    )
    upstream_proxy: str | None = attrs.field(
        default=None, repr=False, metadata=_env("IGRIS_UPSTREAM_PROXY", _text)
    )
    host: str = attrs.field(default="127.0.0.1", metadata=_env("IGRIS_HOST", _text))
    port: int = attrs.field(default=8080, metadata=_env("IGRIS_PORT", _port))
    public_url: str | None = attrs.field(default=None, metadata=_env("IGRIS_PUBLIC_URL", _http_url))
    log_level: str = attrs.field(default="info", metadata=_env("IGRIS_LOG_LEVEL", _log_level))
    audit_failure: str = attrs.field(
        default="closed", metadata=_env("IGRIS_AUDIT_FAILURE", _audit_failure)
    )
    audit_spill_max: int = attrs.field(
        default=1 << 30, metadata=_env("IGRIS_AUDIT_SPILL_MAX", _size)
    )
    log_format: str = attrs.field(default="text", metadata=_env("IGRIS_LOG_FORMAT", _log_format))
    metrics_host: str = attrs.field(default="127.0.0.1", metadata=_env("IGRIS_METRICS_HOST", _text))
    metrics_port: int | None = attrs.field(default=None, metadata=_env("IGRIS_METRICS_PORT", _port))
    allow_upstream_networks: tuple[str, ...] = attrs.field(
        default=(), metadata=_env("IGRIS_ALLOW_UPSTREAM_NETWORKS", _networks)
    )
    max_request_body: int = attrs.field(
        default=8 * 1024 * 1024, metadata=_env("IGRIS_MAX_REQUEST_BODY", _byte_count)
    )
    stream_idle_timeout: float = attrs.field(
        default=300.0, metadata=_env("IGRIS_STREAM_IDLE_TIMEOUT", _seconds)
    )
    max_stale: float = attrs.field(default=60.0, metadata=_env("IGRIS_MAX_STALE", _seconds))
    rate_limit_store: str | None = attrs.field(
        default=None, repr=False, metadata=_env("IGRIS_RATE_LIMIT_STORE", _text)
    )
    auth_failures_per_minute: int = attrs.field(
        default=30, metadata=_env("IGRIS_AUTH_FAILURES_PER_MINUTE", _count)
    )
    workers: int = attrs.field(default=1, metadata=_env("IGRIS_WORKERS", _count))

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read and validate every ``IGRIS_*`` variable in ``environ``.

        Raises:
            ConfigurationError: a value that cannot be used; the message
                names the variable.
        """
        values: dict[str, Any] = {}
        for field in attrs.fields(cls):
            variable = field.metadata["env"]
            raw = environ.get(variable)
            if raw or (raw is not None and field.metadata["keep_empty"]):
                values[field.name] = field.metadata["parse"](variable, raw)
        return cls(**values)

    @classmethod
    def variables(cls) -> dict[str, str]:
        """``{variable: field name}`` for every setting (docs and tests use it)."""
        return {f.metadata["env"]: f.name for f in attrs.fields(cls)}

    def override(self, **options: Any) -> Settings:
        """These settings with each option that is not ``None`` put in place."""
        given = {k: v for k, v in options.items() if v is not None}
        return attrs.evolve(self, **given) if given else self

    # -- derived values ----------------------------------------------------
    @property
    def store_url(self) -> str:
        """``IGRIS_STORE``, else ``sqlite:///<home>/igris.db`` (absolute: four slashes)."""
        return self.store or self.default_store_url

    @property
    def default_store_url(self) -> str:
        return f"sqlite:///{self.home / 'igris.db'}"

    @property
    def crypto_url(self) -> str:
        return self.crypto or DEFAULT_CRYPTO

    @property
    def uses_keyring(self) -> bool:
        return self.crypto_url.split(":", 1)[0].lower() == "keyring"

    @property
    def default_master_key_file(self) -> Path:
        """``<home>/master.key``, which ``serve`` creates on first start."""
        return self.home / "master.key"

    @property
    def master_key_configured(self) -> bool:
        """The one rule: a master key is configured when ``IGRIS_MASTER_KEY`` is
        present (even empty, which the keyring then refuses) or
        ``IGRIS_MASTER_KEY_FILE`` is non-empty. Only when none is configured
        is the default key file used, or created by ``serve``."""
        return self.master_key is not None or self.master_key_file is not None

    def key_file(self) -> Path | None:
        """The key file the keyring reads: ``IGRIS_MASTER_KEY_FILE``, else
        ``<home>/master.key`` when no key is configured and that file exists."""
        if self.master_key is not None:
            return None
        if self.master_key_file is not None:
            return self.master_key_file
        default = self.default_master_key_file
        return default if default.exists() else None

    def crypto_environ(self, environ: Mapping[str, str]) -> dict[str, str]:
        """``environ`` as the crypto provider should see it: the master key
        variables per the rule above (the default key file filled in), the
        rest (``VAULT_TOKEN`` ...) as they are."""
        env = {k: v for k, v in environ.items() if k not in (ENV_MASTER_KEY, ENV_MASTER_KEY_FILE)}
        if self.master_key is not None:
            env[ENV_MASTER_KEY] = self.master_key
        else:
            path = self.key_file()
            if path is not None:
                env[ENV_MASTER_KEY_FILE] = str(path)
        return env

    def missing_master_key_message(self) -> str:
        return (
            f"no master key configured: set {ENV_MASTER_KEY} (base64 of 32 random bytes) "
            f"or {ENV_MASTER_KEY_FILE} (a file holding it, mode 0600), or run "
            f"'igris-mw serve' once to create {self.default_master_key_file}"
        )

    @property
    def default_audit_url(self) -> str:
        """``jsonl:///<home>/audit.jsonl``: the audit sink of a store that keeps none."""
        return f"jsonl://{self.home / 'audit.jsonl'}"

    @property
    def audit_spill_path(self) -> Path:
        """``<home>/audit-spill.jsonl``: events the audit sink cannot take yet."""
        return self.home / "audit-spill.jsonl"
