"""pytest entry point: options, and the decision whether to record at all.

When recording is not enabled this module is all that runs: no gRPC import, no
thread, no per-test hook. When it is, the reporter (``_reporter``) is
registered on the process that sees every result, which is the xdist
controller under pytest-xdist and never a worker; the small marker index runs
wherever tests are collected, so markers travel with reports from workers.
With ``--mcp-deps`` the dependency tracer (``_deps``) runs where tests run:
in the only process, or on each worker, whose reports carry what it found.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Tuple

import pytest

DEFAULT_ADDRESS = "127.0.0.1:50051"
#: Internal, for the plugin's own tests only: replaces DEFAULT_ADDRESS, so a
#: test can put a recorder (or nothing) at "the default address" without
#: taking the real port. Not an option: users configure --mcp-address.
_DEFAULT_ADDRESS_OVERRIDE = "PYTEST_MCP_DEFAULT_ADDRESS"
DEFAULT_TIMEOUT = 5.0

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mcp", "pytest-mcp (record results in a pytest-mcp server)")
    group.addoption(
        "--mcp",
        action="store_true",
        default=None,
        help="stream every test result to a pytest-mcp recorder "
        "(also: ini 'mcp = true', env PYTEST_MCP=1)",
    )
    group.addoption(
        "--mcp-address",
        metavar="HOST:PORT[,HOST:PORT...]",
        default=None,
        help="gRPC address of the recorder, optionally http:// or https://; or a comma-separated "
        "list of recorders sharing one database, for failover: the first that answers is used, "
        "and when it goes away the next, which gets everything not acknowledged "
        f"(env PYTEST_MCP_ADDRESS, ini mcp_address; default {DEFAULT_ADDRESS})",
    )
    group.addoption(
        "--mcp-token",
        metavar="TOKEN",
        default=None,
        help="token sent as 'authorization: Bearer TOKEN' (env PYTEST_MCP_TOKEN)",
    )
    group.addoption(
        "--mcp-tls-ca",
        metavar="FILE",
        default=None,
        help="PEM CA certificate of a recorder served over TLS (serve --tls-cert); implies TLS, "
        "as does an https:// address, which trusts the system's CAs "
        "(env PYTEST_MCP_TLS_CA, ini mcp_tls_ca)",
    )
    group.addoption(
        "--mcp-spool",
        metavar="DIR",
        default=None,
        help="directory for the spool file of results the recorder did not acknowledge "
        "(env PYTEST_MCP_SPOOL, ini mcp_spool; default: the per-user data directory, "
        "e.g. ~/.local/share/pytest-mcp/spool)",
    )
    group.addoption(
        "--mcp-timeout",
        metavar="SECONDS",
        type=float,
        default=None,
        help="how long the end of the run may wait for the recorder's acknowledgements "
        f"before spooling the rest (env PYTEST_MCP_TIMEOUT, ini mcp_timeout; default {DEFAULT_TIMEOUT:g})",
    )
    group.addoption(
        "--mcp-quarantine",
        action="store_true",
        default=None,
        help="fetch the recorder's quarantine list at the start: a quarantined test still runs "
        "and is recorded, but its failure does not fail the run "
        "(env PYTEST_MCP_QUARANTINE=1, ini mcp_quarantine = true)",
    )
    group.addoption(
        "--mcp-deps",
        action="store_true",
        default=None,
        help="record for each test the code under rootdir it ran (setup, call, teardown, and "
        "the setup of the wider-scoped fixtures it uses) and the files under rootdir it read, "
        "so flakiness compares runs of the same code and a change selects the tests it affects; "
        "code run in subprocesses is not seen. Python 3.12+ uses sys.monitoring; older Pythons "
        "sys.settrace, which is slower and gives way to coverage or a debugger "
        "(env PYTEST_MCP_DEPS=1, ini mcp_deps = true; off by default)",
    )
    group.addoption(
        "--mcp-affected",
        action="store_true",
        default=None,
        help="run only the tests the working tree's changes need, as the recorder selects them "
        "from the code each test last ran (recorded by --mcp-deps, which this implies); the rest "
        "are deselected (env PYTEST_MCP_AFFECTED=1, ini mcp_affected = true)",
    )
    group.addoption(
        "--mcp-base",
        metavar="REV",
        default=None,
        help="with --mcp-affected: select by the change from git revision REV to the working tree "
        "(git diff REV) instead of by the code each test last ran",
    )
    parser.addini("mcp", type="bool", default=False, help="record results with pytest-mcp")
    parser.addini(
        "mcp_deps", type="bool", default=False,
        help="pytest-mcp: record each test's dependencies (code run, files read)",
    )
    parser.addini(
        "mcp_affected", type="bool", default=False,
        help="pytest-mcp: run only the tests the working tree's changes need",
    )
    parser.addini(
        "mcp_quarantine", type="bool", default=False,
        help="pytest-mcp: let quarantined tests' failures not fail the run",
    )
    parser.addini(
        "mcp_address",
        default="",
        help=f"pytest-mcp recorder address, or a comma-separated list for failover ({DEFAULT_ADDRESS})",
    )
    parser.addini("mcp_spool", default="", help="pytest-mcp spool directory")
    parser.addini("mcp_tls_ca", default="", help="pytest-mcp recorder's CA certificate (PEM)")
    parser.addini("mcp_timeout", default="", help="pytest-mcp end-of-run wait, in seconds")
    # No ini for the token on purpose: ini files get committed, tokens must not.


def _setting(config: pytest.Config, option: str, env: str, ini: Optional[str]) -> Optional[str]:
    """Command line first, then the environment, then the ini file."""
    value = config.getoption(option)
    if value is not None:
        return str(value)
    value = os.environ.get(env)
    if value:
        return value
    if ini is not None:
        value = config.getini(ini)
        if value:
            return str(value)
    return None


# HOST:PORT, HOST a name, an IPv4 address or a bracketed IPv6 one, with an optional scheme.
_ADDRESS = re.compile(r"(?:https?://)?(?:\[[0-9A-Fa-f:.%]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})")


def parse_addresses(text: str) -> Tuple[str, ...]:
    """The recorder addresses of ``--mcp-address``, in order, each once."""
    addresses = []
    for element in text.split(","):
        address = element.strip()
        if not address:
            raise pytest.UsageError(
                f"--mcp-address: empty address in {text!r} (expected HOST:PORT[,HOST:PORT...])"
            )
        match = _ADDRESS.fullmatch(address)
        if match is None or not 0 < int(match.group(1)) < 65536:
            raise pytest.UsageError(
                f"--mcp-address: {address!r} is not HOST:PORT, http://HOST:PORT "
                "or https://HOST:PORT"
            )
        if address not in addresses:
            addresses.append(address)
    return tuple(addresses)


def _switch(config: pytest.Config, option: str, env_name: str, ini: str) -> bool:
    """An on/off setting: the flag, else the environment (1/0, true/false, ...), else the ini."""
    if config.getoption(option):
        return True
    env = os.environ.get(env_name)
    if env is not None:
        text = env.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise pytest.UsageError(f"{env_name}={env!r}: expected 1/0, true/false, yes/no or on/off")
    return bool(config.getini(ini))


def is_enabled(config: pytest.Config) -> bool:
    """Whether --mcp, PYTEST_MCP or the ini switch asks for recording."""
    return _switch(config, "mcp", "PYTEST_MCP", "mcp")


class MarkerIndex:
    """Marker names of every collected test, by nodeid.

    Reports are all the reporter sees (under xdist, all the controller gets),
    and their ``keywords`` mix markers with node names. Building the index once
    after collection costs far less than a hook around every report; on an
    xdist worker the names are copied onto each report, and xdist carries them
    to the controller. Markers added while a test runs are not seen.
    """

    def __init__(self) -> None:
        self.by_nodeid: dict = {}

    def get(self, nodeid: str):
        return self.by_nodeid.get(nodeid, ())

    def pytest_collection_finish(self, session) -> None:
        index = self.by_nodeid
        for item in session.items:
            names = []
            for mark in item.iter_markers():
                if mark.name not in names:
                    names.append(mark.name)
            if names:
                index[item.nodeid] = tuple(names)


class WorkerMarkers(MarkerIndex):
    """On an xdist worker: puts the marker names on each report sent to the controller."""

    @pytest.hookimpl(tryfirst=True)  # before xdist serializes the report
    def pytest_runtest_logreport(self, report) -> None:
        names = self.by_nodeid.get(report.nodeid)
        if names:
            report.mcp_markers = names


def pytest_configure(config: pytest.Config) -> None:
    if not is_enabled(config):
        return
    if hasattr(config, "workerinput"):
        # An xdist worker: its reports reach the controller, which sends them.
        config.pluginmanager.register(WorkerMarkers(), "mcp-markers")
        unselected = config.workerinput.get("mcp_unselected")
        if unselected:
            from ._affected import WorkerAffected

            config.pluginmanager.register(WorkerAffected(unselected), "mcp-affected")
        pairs = config.workerinput.get("mcp_quarantine")
        if pairs:
            from ._quarantine import WorkerQuarantine

            config.pluginmanager.register(WorkerQuarantine(pairs), "mcp-quarantine")
        # The controller decides (its reporter sets _reporter.WORKER_DEPS),
        # so its settings win.
        if config.workerinput.get("mcp_deps"):
            from ._deps import Tracer

            config.pluginmanager.register(Tracer(config, None), "mcp-deps")
        return

    from ._reporter import Reporter, Settings

    timeout_text = _setting(config, "mcp_timeout", "PYTEST_MCP_TIMEOUT", "mcp_timeout")
    try:
        timeout = float(timeout_text) if timeout_text is not None else DEFAULT_TIMEOUT
    except ValueError:
        raise pytest.UsageError(f"--mcp-timeout: not a number of seconds: {timeout_text!r}") from None
    if timeout < 0:
        raise pytest.UsageError(f"--mcp-timeout: must not be negative, got {timeout_text}")
    tls_ca = None
    tls_ca_path = _setting(config, "mcp_tls_ca", "PYTEST_MCP_TLS_CA", "mcp_tls_ca")
    if tls_ca_path is not None:
        try:
            tls_ca = Path(tls_ca_path).expanduser().read_bytes()
        except OSError as e:
            raise pytest.UsageError(f"--mcp-tls-ca: cannot read {tls_ca_path}: {e.strerror or e}") from None
        if b"-----BEGIN CERTIFICATE-----" not in tls_ca:
            raise pytest.UsageError(f"--mcp-tls-ca: {tls_ca_path} holds no PEM certificate")
    address = _setting(config, "mcp_address", "PYTEST_MCP_ADDRESS", "mcp_address")
    default = os.environ.get(_DEFAULT_ADDRESS_OVERRIDE) or DEFAULT_ADDRESS
    affected = _switch(config, "mcp_affected", "PYTEST_MCP_AFFECTED", "mcp_affected")
    settings = Settings(
        addresses=parse_addresses(address or default),
        # An address someone configured is where the results belong: spool
        # for it. With none, a run that finds nothing listening at the
        # default address is stored locally.
        record_locally=address is None,
        quarantine=_switch(config, "mcp_quarantine", "PYTEST_MCP_QUARANTINE", "mcp_quarantine"),
        token=_setting(config, "mcp_token", "PYTEST_MCP_TOKEN", None),
        tls_ca=tls_ca,
        spool_dir=_setting(config, "mcp_spool", "PYTEST_MCP_SPOOL", "mcp_spool"),
        timeout=timeout,
        # A run of the affected tests records what they ran: the next
        # selection compares with it.
        deps=affected or _switch(config, "mcp_deps", "PYTEST_MCP_DEPS", "mcp_deps"),
    )
    if affected:
        from ._affected import Affected

        config.pluginmanager.register(
            Affected(config, settings.addresses, settings.token, settings.tls_ca,
                     settings.record_locally, config.getoption("mcp_base")),
            "mcp-affected",
        )
    elif config.getoption("mcp_base") is not None:
        raise pytest.UsageError("--mcp-base: only with --mcp-affected")
    if config.getoption("collectonly"):
        return  # nothing runs, so nothing is recorded
    handoff = None
    if settings.deps:
        from ._deps import Handoff, Tracer

        handoff = Handoff()
        # Under xdist this process runs no test: the tracer stays idle, and
        # each worker has its own (see pytest_configure_node in the reporter).
        config.pluginmanager.register(Tracer(config, handoff), "mcp-deps")
    markers = MarkerIndex()
    config.pluginmanager.register(markers, "mcp-markers")
    config.pluginmanager.register(Reporter(config, settings, markers, handoff), "mcp-reporter")
