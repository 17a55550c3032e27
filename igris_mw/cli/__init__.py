"""The ``igris-mw`` command (``docs/cli.md``).

Defaults (every command takes ``--store``, ``--crypto`` and ``--audit``;
``igris_mw._settings`` owns the environment variables):

* data directory: ``$IGRIS_HOME``, else ``./.igris``;
* store: ``--store``, else ``$IGRIS_STORE``, else ``sqlite:///<data dir>/igris.db``;
* crypto: ``--crypto``, else ``$IGRIS_CRYPTO``, else ``keyring:``, whose master
  key comes from ``$IGRIS_MASTER_KEY`` or ``$IGRIS_MASTER_KEY_FILE``, else
  from ``<data dir>/master.key`` if that file exists (``serve`` creates it);
* audit: ``--audit``, else ``$IGRIS_AUDIT``, else the store itself, else (a
  store that keeps none) ``jsonl:///<data dir>/audit.jsonl``.

User errors print one line (``igris-mw: error: ...``) and exit 2 for usage
and configuration errors, 1 for the others; Ctrl-C exits 130. Startup stays
light: nothing here imports the gateway or its HTTP client (``serve``
imports them when it runs).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from .._errors import ConfigurationError, IgrisError
from .._settings import Settings
from . import commands, serve
from ._common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, Parser, UsageError, common_parser

__all__ = [
    "build_parser",
    "crypto_environ",
    "data_dir",
    "default_master_key_file",
    "default_store_url",
    "main",
    "resolve_store_url",
]


# -- the environment's defaults, for scripts and tests ------------------------


def data_dir(environ: Mapping[str, str]) -> Path:
    """``$IGRIS_HOME``, else ``./.igris`` (absolute)."""
    return Settings.from_env(environ).home


def default_store_url(environ: Mapping[str, str]) -> str:
    """``sqlite:///<data dir>/igris.db`` (an absolute path: four slashes)."""
    return Settings.from_env(environ).default_store_url


def resolve_store_url(option: str | None, environ: Mapping[str, str]) -> str:
    """``--store``, else ``$IGRIS_STORE``, else the embedded default."""
    return Settings.from_env(environ).override(store=option).store_url


def default_master_key_file(environ: Mapping[str, str]) -> Path:
    """``<data dir>/master.key``."""
    return Settings.from_env(environ).default_master_key_file


def crypto_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment the keyring reads, with the default key file filled in
    when no master key is configured and that file exists."""
    return Settings.from_env(environ).crypto_environ(environ)


# -- the parser and main ------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The whole ``igris-mw`` parser; each leaf sets ``run(args) -> exit code``."""
    parser = Parser(
        prog="igris-mw",
        description="Credential-injecting gateway for MCP servers.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"igris-mw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = common_parser()
    serve.register(sub, common)
    for register in commands.REGISTRARS:
        register(sub, common)
    return parser


def _fail(message: str, code: int, stream: TextIO | None = None) -> int:
    (stream or sys.stderr).write(f"igris-mw: error: {' '.join(message.split())}\n")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``igris-mw``; returns the exit code (the console script exits with it)."""
    try:
        args = build_parser().parse_args(argv)
        run: Callable[[argparse.Namespace], int] = args.run
        return run(args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (ConfigurationError, UsageError) as exc:
        return _fail(exc.message, EXIT_USAGE)
    except IgrisError as exc:
        return _fail(exc.message, EXIT_ERROR)
    except BrokenPipeError:
        # `igris-mw ... | head`: stop quietly, and keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
