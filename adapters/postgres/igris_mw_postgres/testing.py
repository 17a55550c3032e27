"""A throwaway PostgreSQL cluster for tests and benchmarks.

``TempCluster`` runs the machine's ``initdb``/``pg_ctl`` in a temporary
directory on a free port (unix socket in the same directory, durability off
for speed) and removes everything on ``stop(remove=True)`` or on leaving the
``with`` block. ``initdb`` refuses to run as root, so as root the server runs
as the ``postgres`` OS user (through ``runuser``).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

__all__ = ["GatewayProcess", "TempCluster", "create_database", "drop_database", "find_bindir"]

_FAST = (
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c max_connections=200 -c shared_buffers=32MB"
)


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (PATH first, then Debian's), or ``None``."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    for initdb in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True):
        if os.path.exists(os.path.join(os.path.dirname(initdb), "pg_ctl")):
            return Path(initdb).parent
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TempCluster:
    """A private PostgreSQL server: ``start()``, ``stop()``, ``restart()``, ``dsn``.

    Args:
        bindir: where ``initdb``/``pg_ctl`` live (default: ``find_bindir()``).
        run_as: OS user that runs the server when we are root (default ``postgres``).

    Raises:
        RuntimeError: no server binaries, or the server fails to start
            (the message carries the tail of its log).
    """

    user = "igris"

    def __init__(self, bindir: Path | None = None, *, run_as: str = "postgres") -> None:
        found = bindir or find_bindir()
        if found is None:
            raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl) found")
        self.bindir = found
        self.port = _free_port()
        self.password = secrets.token_urlsafe(16)
        self._run_as = run_as if os.geteuid() == 0 else None
        self._dir: Path | None = None
        self.running = False

    @property
    def dsn(self) -> str:
        """Superuser URL of the ``postgres`` database, over TCP with a password."""
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/postgres"

    @property
    def directory(self) -> Path:
        if self._dir is None:
            raise RuntimeError("the cluster was not started")
        return self._dir

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._run_as is not None:
            cmd = ["runuser", "-u", self._run_as, "--", *cmd]
        # argv list, no shell; every part is ours or the machine's initdb/pg_ctl path
        result = subprocess.run(  # noqa: S603
            cmd, capture_output=True, text=True, check=False, timeout=120
        )
        if result.returncode != 0:
            log = self.directory / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{args[0]} failed ({result.returncode}): {result.stderr.strip()[-2000:]}\n{tail}"
            )

    def _init(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="igris-pg-"))
        pwfile = self._dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._run_as is not None:
            entry = pwd.getpwnam(self._run_as)
            os.chown(self._dir, entry.pw_uid, entry.pw_gid)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        pwfile.chmod(0o600)
        self._run(
            "initdb", "-D", str(self._dir / "data"), "-U", self.user, f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C",
            "--no-sync",
        )  # fmt: skip
        pwfile.unlink()

    def start(self) -> None:
        """Create the cluster on first use, then start the server and wait until it accepts."""
        if self._dir is None:
            self._init()
        if self.running:
            return
        opts = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 {_FAST}"
        self._run(
            "pg_ctl", "-D", str(self.directory / "data"), "-l", str(self.directory / "server.log"),
            "-w", "-t", "60", "-o", opts, "start",
        )  # fmt: skip
        self.running = True

    def stop(self, *, remove: bool = False) -> None:
        """Stop the server (fast shutdown: clients are disconnected); ``remove`` deletes it."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.directory / "data"), "-m", "fast", "-w", "stop")
            self.running = False
        if remove and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> TempCluster:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop(remove=True)

    def __repr__(self) -> str:
        return f"TempCluster(port={self.port}, running={self.running})"


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    if parts.scheme in ("postgresql", "postgres"):
        return urlunsplit(parts._replace(path=f"/{name}"))
    return psycopg.conninfo.make_conninfo(dsn, dbname=name)


def create_database(admin_dsn: str, name: str | None = None) -> str:
    """Create an empty database (the DSN's user needs ``CREATEDB``); returns its DSN."""
    name = name or f"igris_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return _with_database(admin_dsn, name)


def drop_database(admin_dsn: str, dsn: str) -> None:
    """Drop the database ``dsn`` names, disconnecting anyone still in it."""
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name)))
        )


class GatewayProcess:
    """An ``igris-mw serve`` subprocess on a free loopback port (for replica tests).

    Args:
        store: the store URL (e.g. a ``TempCluster`` database).
        home: its ``IGRIS_HOME`` (audit spill file); one per process.
        environ: extra environment (``IGRIS_MASTER_KEY`` at least).
        args: extra ``serve`` arguments, e.g. ``["--cache-ttl", "30"]``.
    """

    def __init__(
        self, store: str, home: Path, environ: dict[str, str], args: list[str] | None = None
    ) -> None:
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._cmd = [
            sys.executable, "-m", "igris_mw.cli", "serve", "--store", store,
            "--port", str(self.port), "--log-level", "warning", *(args or []),
        ]  # fmt: skip
        self._env = {**os.environ, "IGRIS_HOME": str(home), **environ}
        self._log = home / "serve.log"
        home.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start and wait until ``/healthz`` answers."""
        import httpx

        with self._log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603
                self._cmd, env=self._env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"igris-mw serve exited: {self.log_tail()}")
            try:
                if httpx.get(self.base_url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"igris-mw serve did not answer /healthz: {self.log_tail()}")

    def log_tail(self) -> str:
        return self._log.read_text(errors="replace")[-3000:] if self._log.exists() else ""

    def stop(self) -> None:
        """Stop gracefully (SIGTERM: the audit queue is flushed), then kill if stuck."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> GatewayProcess:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
