"""The igris-mw access policy options: api-keys update and the policy options of
connections create/update and api-keys create, against a real SQLite store."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from igris_mw import cli
from igris_mw.testing import FixedKeyring


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("IGRIS_STORE", "IGRIS_CRYPTO", "IGRIS_MASTER_KEY", "IGRIS_MASTER_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("IGRIS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IGRIS_MASTER_KEY", FixedKeyring.environ()["IGRIS_MASTER_KEY"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    (tmp_path / "cred.txt").write_text("cli-policy-canary\n")
    return tmp_path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = _run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_connection_policy_options(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """connections create/update take --rate-limit and --tools-allow/--tools-deny/--no-tools."""
    conn = _json(
        capsys, "connections", "create", "--slug", "pol-conn", "--name", "P",
        "--upstream-url", "https://example.com/mcp", "--credential-file", "cred.txt",
        "--rate-limit", "30/5", "--tools-deny", "delete_*",
    )  # fmt: skip
    assert conn["rateLimit"] == {"requestsPerMinute": 30, "burst": 5}
    assert conn["tools"] == {"allow": [], "deny": ["delete_*"]}
    conn = _json(
        capsys, "connections", "update", "pol-conn", "--rate-limit", "none",
        "--tools-allow", "read_*", "--tools-allow", "search",
    )  # fmt: skip
    assert conn["rateLimit"] is None
    assert conn["tools"] == {"allow": ["read_*", "search"], "deny": []}
    conn = _json(capsys, "connections", "update", "pol-conn", "--no-tools")
    assert conn["tools"] is None


def test_api_keys_update(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """api-keys update changes name, connections, expiry and policy; none removes."""
    key = _json(
        capsys, "api-keys", "create", "--name", "agent", "--scope", "mcp",
        "--rate-limit", "60", "--max-concurrent", "4",
    )  # fmt: skip
    assert key["rateLimit"] == {"requestsPerMinute": 60, "burst": 60}
    assert key["maxConcurrent"] == 4
    updated = _json(
        capsys, "api-keys", "update", key["id"], "--name", "renamed",
        "--connection", "pol-a", "--tools-allow", "echo", "--max-concurrent", "none",
        "--expires-at", "2099-01-01T00:00:00Z",
    )  # fmt: skip
    assert updated["name"] == "renamed"
    assert updated["connections"] == ["pol-a"]
    assert updated["tools"] == {"allow": ["echo"], "deny": []}
    assert updated["maxConcurrent"] is None
    assert updated["expiresAt"] == "2099-01-01T00:00:00.000Z"
    assert "key" not in updated
    cleared = _json(
        capsys, "api-keys", "update", key["id"], "--all-connections", "--expires-at", "none",
        "--rate-limit", "none",
    )  # fmt: skip
    assert cleared["connections"] is None
    assert cleared["expiresAt"] is None
    assert cleared["rateLimit"] is None


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--rate-limit", "fast"], "--rate-limit"),
        (["--rate-limit", "0"], "rateLimit"),
        (["--max-concurrent", "0"], "maxConcurrent"),
        (["--max-concurrent", "many"], "--max-concurrent"),
        (["--tools-allow", ""], "tools"),
        (["--no-tools", "--tools-deny", "x"], "--no-tools"),
        ([], "nothing to change"),
    ],
)
def test_bad_policy_input_is_one_line_and_changes_nothing(
    home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    """A bad policy option: one line on stderr naming it, exit non-zero, the key unchanged."""
    key = _json(capsys, "api-keys", "create", "--name", "agent", "--scope", "mcp")
    before = _json(capsys, "api-keys", "list")
    code, _, err = _run(capsys, "api-keys", "update", key["id"], *argv)
    assert code != 0
    assert needle in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert _json(capsys, "api-keys", "list") == before


def test_unknown_key_id_is_an_error(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """api-keys update of an unknown id: one line, non-zero exit."""
    _json(capsys, "api-keys", "create", "--name", "agent", "--scope", "mcp")
    code, _, err = _run(capsys, "api-keys", "update", "nope", "--name", "x")
    assert code != 0
    assert "no such API key" in err
