"""A recorder served over TLS (``serve --tls-cert``): with its CA the plugin
records over TLS; without it, one warning line and the run is unchanged."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import Server, binary, session_id_of, spool_path_of, warning_lines

SUITE = """
def test_one():
    pass

def test_two():
    assert False
"""


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1 and localhost: (cert, key) paths."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make the test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


@pytest.fixture
def tls_server(tmp_path, certificate):
    """``pytest-mcp serve`` over TLS; yields its gRPC address."""
    cert, key = certificate
    server = Server(tmp_path / "tls.db", extra=["--tls-cert", str(cert), "--tls-key", str(key)]).start()
    yield server.addr
    server.stop()


def test_with_the_servers_ca_the_run_is_recorded_over_tls(pytester, tls_server, certificate, tmp_path):
    cert, _ = certificate
    pytester.makepyfile(SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--mcp", f"--mcp-address={tls_server}", f"--mcp-tls-ca={cert}",
        f"--mcp-spool={tmp_path / 'spool'}", timeout=120,
    )
    assert result.ret == 1
    result.assert_outcomes(passed=1, failed=1)
    assert warning_lines(result) == []
    session_id = session_id_of(result)
    shown = subprocess.run([binary(), "show", session_id, "--db", str(tmp_path / "tls.db")],
                           capture_output=True, text=True, timeout=30)
    assert "finished" in shown.stdout, shown.stdout
    assert "test_two" in shown.stdout, shown.stdout


def test_plaintext_to_a_tls_recorder_costs_one_warning_and_spools(pytester, tls_server, tmp_path):
    pytester.makepyfile(SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--mcp", f"--mcp-address={tls_server}", "--mcp-timeout=2",
        f"--mcp-spool={tmp_path / 'spool'}", timeout=120,
    )
    assert result.ret == 1
    result.assert_outcomes(passed=1, failed=1)
    [warning] = warning_lines(result)
    assert "if it serves TLS, pass --mcp-tls-ca" in warning, warning
    assert spool_path_of(result) is not None


def test_an_unreadable_ca_file_is_a_usage_error_naming_the_option(pytester, tmp_path):
    pytester.makepyfile(SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--mcp", f"--mcp-tls-ca={tmp_path / 'missing.pem'}", timeout=120,
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--mcp-tls-ca" in "\n".join(result.errlines)
