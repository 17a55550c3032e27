"""Parsing ``vault://``, ``openbao://`` and ``vault-transit://`` URLs and the
Vault environment (``VAULT_TOKEN`` or ``VAULT_ROLE_ID`` + ``VAULT_SECRET_ID``).

A URL never carries a credential: one with user info is refused, so that a
token cannot end up in a shell history, a process list or a log line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlsplit

import attrs

from igris_mw.errors import ConfigurationError

__all__ = ["Credentials", "Endpoint", "parse_store_url", "parse_transit_url"]

DEFAULT_PORT = 8200
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_OPTIONS = frozenset({"tls", "namespace"})


@attrs.frozen
class Endpoint:
    """Where Vault is: base URL, TLS, namespace, CA file (never a credential)."""

    host: str
    port: int
    tls: bool = True
    namespace: str | None = None
    ca_file: str | None = None

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


@attrs.frozen
class Credentials:
    """A token, or an AppRole pair; secrets hidden from repr."""

    token: str | None = attrs.field(default=None, repr=False)
    role_id: str | None = attrs.field(default=None, repr=False)
    secret_id: str | None = attrs.field(default=None, repr=False)
    approle_mount: str = "approle"

    @property
    def method(self) -> str:
        return "approle" if self.role_id else "token"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], where: str) -> Credentials:
        """AppRole when ``VAULT_ROLE_ID`` is set, else ``VAULT_TOKEN``.

        Raises:
            ConfigurationError: neither is set, or only half of the AppRole pair.
        """
        role_id = environ.get("VAULT_ROLE_ID", "").strip()
        secret_id = environ.get("VAULT_SECRET_ID", "").strip()
        token = environ.get("VAULT_TOKEN", "").strip()
        mount = environ.get("VAULT_APPROLE_MOUNT", "approle").strip().strip("/") or "approle"
        if role_id or secret_id:
            if not (role_id and secret_id):
                missing = "VAULT_SECRET_ID" if role_id else "VAULT_ROLE_ID"
                raise ConfigurationError(f"{where}: AppRole login needs {missing} as well")
            return cls(role_id=role_id, secret_id=secret_id, approle_mount=mount)
        if token:
            return cls(token=token)
        raise ConfigurationError(
            f"{where}: no Vault credentials; set VAULT_TOKEN, "
            "or VAULT_ROLE_ID and VAULT_SECRET_ID for AppRole"
        )


def _split(
    url: str, schemes: tuple[str, ...], environ: Mapping[str, str]
) -> tuple[Endpoint, list[str], str]:
    if not isinstance(url, str):
        raise ConfigurationError("a Vault URL must be a string")
    shown = url.split("@", 1)[-1] if "@" in url else url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"malformed Vault URL {shown!r}: bad host or port") from None
    where = f"{parts.scheme}://{parts.hostname or ''}{':' + str(port) if port else ''}{parts.path}"
    if parts.scheme not in schemes:
        raise ConfigurationError(
            f"malformed Vault URL {where!r}: scheme must be one of {', '.join(schemes)}"
        )
    if "@" in parts.netloc:
        raise ConfigurationError(
            f"Vault URL {where!r} must not carry credentials; set VAULT_TOKEN "
            "(or VAULT_ROLE_ID and VAULT_SECRET_ID) in the environment instead"
        )
    if not parts.hostname:
        raise ConfigurationError(f"malformed Vault URL {where!r}: no host")
    if parts.fragment:
        raise ConfigurationError(f"malformed Vault URL {where!r}: a fragment is not allowed")
    options: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _OPTIONS:
            raise ConfigurationError(
                f"Vault URL {where!r}: unknown option {name!r} "
                f"(known: {', '.join(sorted(_OPTIONS))})"
            )
        options[name] = value
    tls_text = options.get("tls", "true").lower()
    if tls_text not in ("true", "false", "1", "0"):
        raise ConfigurationError(f"Vault URL {where!r}: tls must be true or false")
    namespace = options.get("namespace") or environ.get("VAULT_NAMESPACE") or None
    segments = [s for s in parts.path.split("/") if s]
    for segment in segments:
        if not _SEGMENT_RE.match(segment):
            raise ConfigurationError(
                f"Vault URL {where!r}: path segment {segment!r} is not allowed"
            )
    endpoint = Endpoint(
        host=parts.hostname,
        port=port or DEFAULT_PORT,
        tls=tls_text in ("true", "1"),
        namespace=namespace,
        ca_file=environ.get("VAULT_CACERT") or None,
    )
    return endpoint, segments, where


def parse_store_url(url: str, environ: Mapping[str, str]) -> tuple[Endpoint, str, str, str]:
    """``vault://host:port/<kv-v2 mount>[/<path prefix>]`` -> (endpoint, mount, prefix, where).

    Raises:
        ConfigurationError: malformed, credentials in the URL, no mount, unknown option.
    """
    endpoint, segments, where = _split(url, ("vault", "openbao"), environ)
    if not segments:
        raise ConfigurationError(
            f"Vault URL {where!r} names no KV v2 mount; expected vault://host:port/<mount>[/<prefix>]"
        )
    return endpoint, segments[0], "/".join(segments[1:]), where


def parse_transit_url(url: str, environ: Mapping[str, str]) -> tuple[Endpoint, str, str, str]:
    """``vault-transit://host:port/<transit mount>/<key name>`` -> (endpoint, mount, key, where).

    Raises:
        ConfigurationError: malformed, credentials in the URL, not exactly mount and key.
    """
    endpoint, segments, where = _split(url, ("vault-transit",), environ)
    if len(segments) != 2:
        raise ConfigurationError(
            f"Vault Transit URL {where!r} must name a mount and a key: "
            "vault-transit://host:port/<mount>/<key>"
        )
    return endpoint, segments[0], segments[1], where
