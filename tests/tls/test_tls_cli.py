"""The igris-mw command's TLS options: --ca-file, --client-cert-file, --client-key-file, serve."""

from __future__ import annotations

import io
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme

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
    (tmp_path / "cred.txt").write_text("cli-tls-credential\n")
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def write_identity(directory: Path, leaf: trustme.LeafCert, name: str) -> tuple[Path, Path]:
    cert = directory / f"{name}.crt"
    key = directory / f"{name}.key"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return cert, key


def test_create_update_and_rotate_with_tls_files(
    home: Path, capsys: pytest.CaptureFixture[str], tls_ca: trustme.CA, tls_ca_file: Path
) -> None:
    """CA, client certificate and key come from files; the key is never printed or stored plain."""
    first = tls_ca.issue_cert(common_name="cli-one")
    cert, key = write_identity(home, first, "one")
    created = run_json(
        capsys,
        "connections",
        "create",
        "--slug",
        "internal",
        "--name",
        "Internal",
        "--upstream-url",
        "https://mcp.internal.test/mcp",
        "--credential-file",
        "cred.txt",
        "--ca-file",
        str(tls_ca_file),
        "--client-cert-file",
        str(cert),
        "--client-key-file",
        str(key),
    )
    assert created["caCertificate"] == tls_ca_file.read_text()
    assert created["clientCertificate"] == cert.read_text()
    assert "clientKey" not in created

    code, out, _ = run(capsys, "connections", "show", "internal")
    assert code == 0
    assert "PEM, 1 certificate" in out

    second = tls_ca.issue_cert(common_name="cli-two")
    cert2, key2 = write_identity(home, second, "two")
    rotated = run_json(
        capsys,
        "connections",
        "rotate",
        "internal",
        "--client-cert-file",
        str(cert2),
        "--client-key-file",
        str(key2),
    )
    assert rotated["credentialVersion"] == 2
    assert rotated["clientCertificate"] == cert2.read_text()

    updated = run_json(capsys, "connections", "update", "internal", "--remove-ca")
    assert updated["caCertificate"] is None
    updated = run_json(capsys, "connections", "update", "internal", "--remove-client-cert")
    assert updated["clientCertificate"] is None

    with sqlite3.connect(home / "home" / "igris.db") as db:
        dumped = "\n".join(db.iterdump())
    for pem in (key.read_text(), key2.read_text()):
        for line in pem.splitlines():
            if "-----" not in line:
                assert line not in dumped


def test_mismatched_key_file_is_one_line_error(
    home: Path, capsys: pytest.CaptureFixture[str], tls_ca: trustme.CA
) -> None:
    """A key that does not match its certificate is refused; nothing is stored."""
    cert, _ = write_identity(home, tls_ca.issue_cert(common_name="a"), "a")
    _, other_key = write_identity(home, tls_ca.issue_cert(common_name="b"), "b")
    code, _, err = run(
        capsys,
        "connections",
        "create",
        "--slug",
        "bad-tls",
        "--name",
        "Bad",
        "--upstream-url",
        "https://mcp.internal.test/mcp",
        "--auth-type",
        "none",
        "--client-cert-file",
        str(cert),
        "--client-key-file",
        str(other_key),
    )
    assert code != 0
    assert "clientKey" in err
    assert "does not match" in err
    assert "PRIVATE KEY" not in err
    code, _, _ = run(capsys, "connections", "show", "bad-tls")
    assert code != 0


def test_serve_has_upstream_tls_and_proxy_options() -> None:
    """serve takes --upstream-ca-file and --upstream-proxy."""
    args = cli.build_parser().parse_args(
        ["serve", "--upstream-ca-file", "ca.pem", "--upstream-proxy", "http://proxy:3128"]
    )
    assert args.upstream_ca_file == "ca.pem"
    assert args.upstream_proxy == "http://proxy:3128"
