"""What every ``igris-mw`` command shares: exit codes, the one-line parser,
the location options (``--store``, ``--crypto``, ``--audit``) and how they
combine with the environment (``igris_mw._settings``) into a store, a
crypto provider and an audit sink.

Nothing here imports the gateway or its HTTP client: startup stays light.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .._errors import ConfigurationError, IgrisError
from .._settings import DEFAULT_HOME, ENV_MASTER_KEY, ENV_MASTER_KEY_FILE, Settings
from ..crypto import AuditKey, CryptoProvider

if TYPE_CHECKING:
    from .._service import AuditSink
    from ..storage import Store

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(IgrisError):
    """A command line that parses but makes no sense; exits 2."""


class Parser(argparse.ArgumentParser):
    """Usage errors on one line, like every other user error."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"igris-mw: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(EXIT_USAGE)


def add_location_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="URL",
        help=f"store URL (default: $IGRIS_STORE, else sqlite:///<data dir>/igris.db, "
        f"data dir = $IGRIS_HOME or ./{DEFAULT_HOME})",
    )
    parser.add_argument(
        "--crypto",
        metavar="URL",
        help=f"crypto provider URL (default: $IGRIS_CRYPTO, else keyring:, keyed by "
        f"${ENV_MASTER_KEY} / ${ENV_MASTER_KEY_FILE} / <data dir>/master.key)",
    )
    parser.add_argument(
        "--audit",
        metavar="URL",
        help="separate audit sink: a store URL that keeps audit events, or jsonl:///path "
        "(default: $IGRIS_AUDIT, else the store itself, else jsonl:///<data dir>/audit.jsonl "
        "for a store that keeps none, such as vault://)",
    )


def common_parser() -> argparse.ArgumentParser:
    """The options every store command takes."""
    common = Parser(add_help=False)
    add_location_options(common)
    common.add_argument("--json", action="store_true", help="print JSON")
    return common


def settings_for(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """The environment's settings with the command line's location options on top."""
    return Settings.from_env(environ).override(
        store=getattr(args, "store", None),
        crypto=getattr(args, "crypto", None),
        audit=getattr(args, "audit", None),
    )


def make_data_dir(settings: Settings) -> Path:
    """Create the data directory (0700) if it is missing."""
    home = settings.home
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create the data directory {str(home)!r} ({exc.strerror}); "
            "set IGRIS_HOME or --store"
        ) from None
    return home


def audit_url_for(settings: Settings, store: Store) -> tuple[str | None, bool]:
    """The audit sink URL for ``store``: ``--audit`` / ``IGRIS_AUDIT``, else
    ``None`` (the store itself), else, for a store that keeps no audit
    events, the JSON-lines file in the data directory. The flag says the
    last default was taken, so ``serve`` can say so."""
    if settings.audit:
        return settings.audit, False
    if store.capabilities.audit:
        return None, False
    return settings.default_audit_url, True


def load_crypto(settings: Settings, environ: Mapping[str, str]) -> CryptoProvider:
    """The crypto provider; a keyring with no key anywhere names every fix."""
    from .._plugins import crypto_from_url

    env = settings.crypto_environ(environ)
    if settings.uses_keyring and ENV_MASTER_KEY not in env and ENV_MASTER_KEY_FILE not in env:
        raise ConfigurationError(settings.missing_master_key_message())
    return crypto_from_url(settings.crypto_url, env)


class LazyCrypto:
    """Builds the real provider on first use, so commands that never touch a
    credential (list, disable, audit ...) need no master key."""

    name = "lazy"

    def __init__(self, settings: Settings, environ: Mapping[str, str]) -> None:
        self._settings = settings
        self._environ = environ
        self._provider: CryptoProvider | None = None

    def _get(self) -> CryptoProvider:
        if self._provider is None:
            self._provider = load_crypto(self._settings, self._environ)
        return self._provider

    async def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        return await self._get().encrypt(plaintext, associated_data)

    async def decrypt(self, envelope: bytes, associated_data: bytes) -> bytes:
        return await self._get().decrypt(envelope, associated_data)

    async def rewrap(self, envelope: bytes, associated_data: bytes) -> bytes:
        return await self._get().rewrap(envelope, associated_data)

    def key_id_of(self, envelope: bytes) -> str | None:
        return self._get().key_id_of(envelope)

    @property
    def primary_key_id(self) -> str:
        return self._get().primary_key_id

    async def audit_key(self, key_id: str | None = None) -> AuditKey:
        # Commands that write an audit event (any change) seal it under the key.
        return await self._get().audit_key(key_id)

    async def aclose(self) -> None:
        if self._provider is not None:
            await self._provider.aclose()

    def __repr__(self) -> str:
        return f"LazyCrypto(loaded={self._provider is not None})"


async def open_audit_sink(url: str | None) -> AuditSink | None:
    if url is None:
        return None
    from .._audit import audit_sink_from_url

    return await audit_sink_from_url(url)


async def close_audit_sink(sink: Any, store: Store) -> None:
    if sink is not None and sink is not store:
        await sink.close()
