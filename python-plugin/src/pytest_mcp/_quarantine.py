"""Quarantine (``--mcp-quarantine``): tests whose failures do not fail the run.

At session start the list of entries that apply to the project is fetched
from the recorder (``ListQuarantine``) with a short deadline. A test an entry
names still runs; its real outcome is recorded with the quarantined flag,
but a failure or error is turned, before pytest counts it, into a result of
its own category ("quarantined", ``Q``), so it fails neither the run nor
``-x``. If the list cannot be fetched, nothing is quarantined and one warning
says so: the run then fails exactly as it would without the plugin.

Runs on the xdist controller (and without xdist, in the only process): the
reports of every worker pass through its ``pytest_runtest_logreport``. An
xdist worker's own session counts failures too, to stop for ``-x``: the
controller hands the list to each worker (``workerinput``), whose
``WorkerQuarantine`` keeps quarantined failures out of that count. The
reports travel to the controller unchanged.
"""

from __future__ import annotations

import fnmatch
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

#: The whole fetch, every address tried, must fit in this many seconds.
FETCH_DEADLINE = 2.0

#: What the original outcome is kept as on a report this plugin changed.
REAL = "mcp_quarantined"

#: The key of the (pattern, reason) list in an xdist worker's ``workerinput``.
WORKER_INPUT = "mcp_quarantine"


class Entry:
    """One entry as the recorder sent it."""

    __slots__ = ("pattern", "reason", "exact")

    def __init__(self, pattern: str, reason: str) -> None:
        self.pattern = pattern
        self.reason = reason
        self.exact = not any(c in pattern for c in "*?[")

    def covers(self, nodeid: str) -> bool:
        # A parametrized nodeid (test_p[1]) read as a pattern does not match
        # itself: equality comes first, as on the server.
        return nodeid == self.pattern or (not self.exact and fnmatch.fnmatchcase(nodeid, self.pattern))


def fetch(addresses: Sequence[str], token: Optional[str], tls_ca: Optional[bytes],
          project: str) -> Tuple[List[Entry], Optional[str], bool]:
    """The entries for ``project``, and ``None``; or no entries and why not.
    The flag is true when no recorder could be reached at all (no answer from
    any address, as ``_sender.Status.reached`` tells)."""
    try:
        import grpc

        from ._proto import recorder_pb2, recorder_pb2_grpc
        from ._sender import status
    except Exception as e:  # a broken grpcio install must not break the run
        return [], f"grpc is not usable ({e})", False
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    deadline = time.monotonic() + FETCH_DEADLINE
    problems = []
    unreachable = True
    for address in addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            problems.append(f"{address}: no time left")
            break
        target = address.split("://", 1)[1] if "://" in address else address
        try:
            if address.startswith("https://") or tls_ca is not None:
                channel = grpc.secure_channel(
                    target, grpc.ssl_channel_credentials(root_certificates=tls_ca))
            else:
                channel = grpc.insecure_channel(target)
            try:
                stub = recorder_pb2_grpc.RecorderStub(channel)
                answer = stub.ListQuarantine(
                    recorder_pb2.ListQuarantineRequest(project=project),
                    timeout=left, metadata=metadata)
            finally:
                channel.close()
        except grpc.RpcError as e:
            failure = status(e)
            unreachable = unreachable and not failure.reached
            line = failure.details.strip().split("\n", 1)[0] or failure.code
            problems.append(f"{address}: {failure.code}: {line}")
            continue
        except Exception as e:
            unreachable = False
            problems.append(f"{address}: {e}")
            continue
        return [Entry(e.pattern, e.reason) for e in answer.entries], None, False
    return [], "; ".join(problems) or "no address to ask", unreachable


class Quarantine:
    """The fetched entries, and the reports they changed."""

    def __init__(self, entries: List[Entry]) -> None:
        self._exact: Dict[str, Entry] = {e.pattern: e for e in entries if e.exact}
        self._patterns = [e for e in entries if not e.exact]
        self._memo: Dict[str, Optional[Entry]] = {}
        #: (nodeid, subtest or "", when, reason, crash line) of each failure let through.
        self.quarantined: List[Tuple[str, str, str, str, str]] = []

    def __len__(self) -> int:
        return len(self._exact) + len(self._patterns)

    def pairs(self) -> List[Tuple[str, str]]:
        """(pattern, reason) of every entry, for an xdist worker."""
        return [(e.pattern, e.reason) for e in (*self._exact.values(), *self._patterns)]

    def entry_for(self, nodeid: str) -> Optional[Entry]:
        try:
            return self._memo[nodeid]
        except KeyError:
            pass
        found = self._exact.get(nodeid)
        if found is None:
            found = next((e for e in self._patterns if e.covers(nodeid)), None)
        self._memo[nodeid] = found
        return found

    # Before pytest's own hooks count the report (Session's failure count,
    # maxfail, the terminal reporter), and before runtestprotocol decides
    # whether a setup that failed lets the test body run: a quarantined setup
    # error stays a reason not to run it (the report is "skipped", not "passed").
    # A wrapper: Session's own (tryfirst) counting runs inside it, after this.
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_logreport(self, report):
        try:
            self._apply(report)
        except Exception:  # never break the run: leave the report as pytest made it
            pass
        yield

    def _apply(self, report) -> None:
        if not (self._exact or self._patterns):
            return
        entry = self.entry_for(report.nodeid)
        if entry is None:
            return
        d = report.__dict__
        if REAL in d:
            return
        if report.outcome != "failed" or "wasxfail" in d:
            d[REAL] = None  # quarantined, nothing changed
            return
        text = report.longreprtext
        crash = getattr(getattr(report.longrepr, "reprcrash", None), "message", "") or ""
        # What the recorder stores: the real outcome and its traceback.
        d[REAL] = ("failed", report.longrepr, text)
        path, line = report.location[0], report.location[1]
        reason = f"quarantined: {entry.reason}"
        # A (path, line, reason) tuple, as a skip has: --junitxml and -rs read it.
        report.outcome = "skipped"
        report.longrepr = (str(path), (line or 0) + 1, reason)
        subtest = _subtest(report)
        first = crash.strip().splitlines()[0] if crash.strip() else ""
        self.quarantined.append((report.nodeid, subtest, report.when, entry.reason, first))

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_teststatus(self, report, config):
        d = getattr(report, "__dict__", {})
        if d.get(REAL):
            return "quarantined", "Q", ("QUARANTINED", {"yellow": True})
        return None

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.quarantined:
            return
        terminalreporter.section("quarantined failures (they did not fail the run)", yellow=True)
        for nodeid, subtest, when, reason, crash in self.quarantined:
            name = f"{nodeid} {subtest}" if subtest else nodeid
            phase = "" if when == "call" else f" (in {when})"
            terminalreporter.write_line(f"QUARANTINED {name}{phase}: {reason}")
            if crash:
                terminalreporter.write_line(f"    {crash}")


class WorkerQuarantine:
    """On an xdist worker: a quarantined failure does not count towards the
    worker session's ``-x`` / ``--maxfail``. The report itself is sent to the
    controller as it is; the controller shows and records it."""

    def __init__(self, pairs) -> None:
        self._quarantine = Quarantine([Entry(p, r) for p, r in pairs])
        self._session: Optional[pytest.Session] = None

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self._session = session

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_logreport(self, report):
        session = self._session
        counted = (
            session is not None
            and report.outcome == "failed"
            and "wasxfail" not in report.__dict__
            and self._quarantine.entry_for(report.nodeid) is not None
        )
        if counted:
            # The session adds one for this failure inside the wrapper and
            # then compares with --maxfail (a decision pytest cannot take
            # back): taken off beforehand, the count stays where it was.
            session.testsfailed -= 1
        yield


def _subtest(report: Any) -> str:
    context = report.__dict__.get("context")
    msg = getattr(context, "msg", None)
    return f"[{msg}]" if msg is not None else ""
