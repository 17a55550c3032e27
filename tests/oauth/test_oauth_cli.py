"""The CLI's OAuth and per-user commands, against the gateway's store, with the real provider."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
from e2e_harness import MASTER_KEY, Gateway, client_headers, new_slug, streamable_session
from oauth_harness import PUBLIC_CLIENT, ResourceServer, drive_consent


async def cli(gateway: Gateway, *args: str) -> Any:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "igris_mw.cli", *args,
        "--store", f"sqlite:///{gateway.db_path}", "--json",
        env={**os.environ, "IGRIS_MASTER_KEY": MASTER_KEY},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    return json.loads(stdout)


async def test_cli_authorize_begins_a_flow_the_gateway_completes(
    gateway: Gateway, resource_server: ResourceServer
) -> None:
    """connections authorize prints a URL; after consent the gateway holds the grant."""
    slug = new_slug("clioauth")
    oauth = json.dumps({"clientId": PUBLIC_CLIENT, "scopes": ["mcp:tools"]})
    created = await cli(
        gateway, "connections", "create", "--slug", slug, "--name", "cli oauth",
        "--upstream-url", resource_server.resource, "--auth-type", "oauth2", "--oauth", oauth,
    )  # fmt: skip
    assert created["oauth"]["clientId"] == PUBLIC_CLIENT
    started = await cli(gateway, "connections", "authorize", slug, "--public-url", gateway.base_url)
    callback = await drive_consent(
        started["authorizeUrl"], account="erin",
        redirect_prefix=f"{gateway.base_url}/api/v1/oauth/callback",
    )  # fmt: skip
    async with httpx.AsyncClient() as browser:
        assert (await browser.get(callback)).status_code == 200
    async with streamable_session(gateway.url(slug), client_headers(gateway.mcp_key)) as session:
        result = await session.call_tool("whoami", {})
    assert json.loads(result.content[0].text)["sub"] == "erin"  # type: ignore[union-attr]


async def test_cli_per_user_credentials(gateway: Gateway, tmp_path: Path) -> None:
    """set-user-credential, users, delete-user-credential and api-keys create --user."""
    slug = new_slug("cliuser")
    await cli(
        gateway, "connections", "create", "--slug", slug, "--name", "cli users",
        "--upstream-url", "http://127.0.0.1:9/mcp", "--credential-scope", "per_user",
    )  # fmt: skip
    secret_file = tmp_path / "alice.txt"
    secret_file.write_text("alice-canary-secret\n")
    shown = await cli(
        gateway, "connections", "set-user-credential", slug, "alice",
        "--credential-file", str(secret_file),
    )  # fmt: skip
    assert shown["user"] == "alice"
    listed = await cli(gateway, "connections", "users", slug)
    assert [u["user"] for u in listed["data"]] == ["alice"]
    assert "alice-canary-secret" not in json.dumps(listed)
    key = await cli(
        gateway, "api-keys", "create", "--name", "alice", "--scope", "mcp", "--user", "alice"
    )
    assert key["user"] == "alice"
    await cli(gateway, "connections", "delete-user-credential", slug, "alice")
    assert (await cli(gateway, "connections", "users", slug))["data"] == []
