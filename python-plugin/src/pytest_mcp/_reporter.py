"""Turns pytest's reports into outcome records and runs the session's lifecycle.

Registered only when recording is enabled, and only where every report
arrives (the xdist controller, never a worker). Per test it does a few dict
operations and appends one tuple to the sender's queue; anything slow (gRPC,
protobuf, files, git) happens on the sender thread.

Which records a test produces follows pytest's own counting, so stored counts
match the terminal summary: the phase that decides the outcome gives one
record per attempt (its duration is the sum of all phases, its captured output
that of all phases); a teardown error after a decided outcome is a second
record, as pytest counts it as a second result. Each subtest report is a
record of its own under its test's nodeid, with the subtest's label apart
(so a rerun command names a test pytest can select); each
pytest-rerunfailures attempt keeps its record, with the attempt number.

Captured output is collected for tests that did not pass; for passing ones
only while the recorder may keep it (see ``Sender.keep_passing_output``).

With dependencies (``--mcp-deps``) an attempt's record carries the keys of
the units it ran in setup, call and teardown, known at its teardown report:
without xdist from the tracer of this process (``_deps.Handoff``), from a
worker on the report itself (``mcp_deps``, with ``mcp_units`` declaring the
units that worker had not sent before). A teardown error's second record
carries the same keys; subtests and collection errors carry none.
"""

from __future__ import annotations

import ast
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import pytest

from . import _environment
from . import _quarantine
from . import _records as R
from ._sender import Sender

MESSAGE_LIMIT = 2000  # characters of the one-line crash message
#: The key in an xdist worker's ``workerinput`` that asks it to record dependencies.
WORKER_DEPS = "mcp_deps"
_KINDS = ("passed", "failed", "skipped", "error", "xfailed", "xpassed")
_STATS_KEYS = {"error": "errors"}


@dataclass
class Settings:
    """Resolved options (command line, environment, ini)."""

    #: Recorder addresses, tried in this order (failover: see ``Sender``).
    addresses: Tuple[str, ...]
    token: Optional[str]
    spool_dir: Optional[str]
    timeout: float
    #: PEM bytes of the CA that signed the recorder's certificate; with it, or
    #: with an ``https://`` address, the channel uses TLS.
    tls_ca: Optional[bytes] = None
    #: No address was configured: when nothing listens at the default one,
    #: the run is stored in the default local database by the bundled binary.
    #: A recorder that is there and refuses the run is answered like a
    #: configured one (warning, spool file): its database is its own.
    record_locally: bool = False
    #: Fetch the quarantine list at session start (--mcp-quarantine).
    quarantine: bool = False
    #: Record each test's dependencies (--mcp-deps).
    deps: bool = False


@dataclass
class _Local:
    """What storing a spool file in the default local database came to."""

    stored: bool
    where: str
    #: Why it was not stored (``None``: there is no bundled binary to try).
    problem: Optional[str] = None


#: Longest the end of a run may wait for the local import.
LOCAL_IMPORT_TIMEOUT = 300.0


def _record_locally(spool_path) -> _Local:
    """Imports the run's spool file into the default local database with the
    bundled binary (idempotent), and removes the file once that succeeded."""
    import os
    import subprocess

    from . import _binary

    database = _binary.default_database()
    where = _binary.shown(database)
    binary = _binary.bundled()
    if binary is None:
        return _Local(False, where)
    try:
        done = subprocess.run(
            # --source plugin: this is the run itself, stored where it would
            # have been streamed, not a person's replay of a failed delivery.
            [binary, "import", "--source", "plugin", "--db", str(database), str(spool_path)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=LOCAL_IMPORT_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return _Local(False, where, f"{e}; the results stay in the spool file")
    if done.returncode != 0:
        lines = [l for l in done.stderr.splitlines() if l.strip()] or [f"exit status {done.returncode}"]
        reason = lines[-1].removeprefix("pytest-mcp: error: ").removeprefix("pytest-mcp: ")
        return _Local(False, where, f"{_one_line(reason)}; the results stay in the spool file")
    try:
        os.remove(spool_path)
    except OSError:
        pass
    return _Local(True, where)


def _one_line(text: str) -> str:
    text = text.strip()
    line = text.split("\n", 1)[0].rstrip()
    if len(line) > MESSAGE_LIMIT:
        line = line[: MESSAGE_LIMIT - 3] + "..."
    return line


def _crash_message(longrepr: Any) -> str:
    """The one-line reason of a failure, error or skip."""
    if longrepr is None:
        return ""
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        return _one_line(crash.message)
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (path, line, reason)
        reason = str(longrepr[2])
        return _one_line(reason[len("Skipped: ") :] if reason.startswith("Skipped: ") else reason)
    text = str(longrepr)
    # Collection errors are preformatted text whose "E   " lines hold the error.
    for line in reversed(text.splitlines()):
        if line.startswith("E   "):
            return _one_line(line[1:])
    return _one_line(text)


def _kind(report: Any) -> str:
    """The outcome a setup/call/teardown report stands for, as pytest counts it
    (for a quarantined failure: the failure, not what pytest was told)."""
    real = report.__dict__.get(_quarantine.REAL)
    outcome = real[0] if real else report.outcome
    if outcome == "passed":
        return "xpassed" if "wasxfail" in report.__dict__ else "passed"
    if outcome == "skipped":
        return "xfailed" if "wasxfail" in report.__dict__ else "skipped"
    # "failed", or "rerun" (pytest-rerunfailures) for an attempt that will be retried.
    return "failed" if report.when == "call" else "error"


def _detail(report: Any, kind: str):
    """(message, longrepr text) for a report of the given kind."""
    if kind == "passed":
        return "", ""
    if kind == "xpassed":
        return _one_line(report.wasxfail or ""), ""
    if kind == "skipped":
        return _crash_message(report.longrepr), ""
    real = report.__dict__.get(_quarantine.REAL)
    if real:
        return _crash_message(real[1]), real[2]
    text = report.longreprtext
    if kind == "xfailed":
        return _one_line(report.wasxfail or "") or _crash_message(report.longrepr), text
    return _crash_message(report.longrepr), text


def _captured(sections):
    """(stdout, stderr, log) from a report's sections, all phases joined."""
    if not sections:
        return "", "", ""
    out: List[str] = []
    err: List[str] = []
    log: List[str] = []
    for title, content in sections:
        if title.startswith("Captured stdout"):
            out.append(content)
        elif title.startswith("Captured stderr"):
            err.append(content)
        elif title.startswith("Captured log"):
            log.append(content)
    return "".join(out), "".join(err), "\n".join(log)


def _location(report: Any):
    location = report.location
    if not location:
        return "", None
    line = location[1]
    return location[0] or "", (line + 1 if line is not None else None)


def _user_properties(report: Any):
    """(name, value) text pairs of record_property / user_properties."""
    props = report.__dict__.get("user_properties")
    if not props:
        return ()
    return tuple((str(name), str(value)) for name, value in props)


def _unrepr(value: Any) -> Any:
    """Undoes one repr() of a string: pytest applies saferepr() to a subtest's
    keyword values again when xdist hands the report to the controller."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        try:
            inner = ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return value
        if isinstance(inner, str):
            return inner
    return value


def _subtest_label(report: Any, from_worker: bool) -> str:
    """The subtest's label as pytest prints it without xdist: ``[msg] (k=v, ...)``."""
    context = report.context
    parts = []
    msg = getattr(context, "msg", None)
    if msg is not None:
        parts.append(f"[{msg}]")
    kwargs = getattr(context, "kwargs", None)
    if kwargs:
        values = ((k, _unrepr(v) if from_worker else v) for k, v in kwargs.items())
        parts.append("(" + ", ".join(f"{k}={v}" for k, v in values) + ")")
    return " ".join(parts) or "(<subtest>)"


class Reporter:
    """The recording plugin object; see the module docstring."""

    def __init__(self, config: pytest.Config, settings: Settings, markers, deps=None) -> None:
        """``deps``: the ``_deps.Handoff`` shared with this process's tracer, when
        dependencies are recorded."""
        self.config = config
        self.settings = settings
        self._markers = markers  # plugin.MarkerIndex
        self._deps = deps
        self._deps_warned = False
        self.session_id = str(uuid.uuid4())
        self._sender: Optional[Sender] = None
        self._append = None
        self._open: Dict[Any, list] = {}  # (nodeid, worker) -> [start, duration, decided, extras]
        self._attempts: Dict[Any, int] = {}  # (nodeid, worker) -> attempts finished
        self._counts = dict.fromkeys(_KINDS, 0)  # used only without a terminal reporter
        self._t0 = 0.0
        self._lines: List[str] = []
        self._printed = False
        self._warned = False
        self._hold_warning = False
        self._quarantine: Optional[_quarantine.Quarantine] = None
        self._quarantine_tried = False

    # ---- session lifecycle -------------------------------------------------

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        started = time.time()
        self._t0 = time.perf_counter()
        environment = _environment.from_config(self.config)
        affected = self.config.pluginmanager.get_plugin("mcp-affected")
        if affected is not None and affected.select() is not None:
            # A partial run: history and verdicts count what ran.
            environment["selection"] = affected.select().label()
        self._sender = Sender(
            addresses=self.settings.addresses,
            token=self.settings.token,
            tls_ca=self.settings.tls_ca,
            spool_dir=self.settings.spool_dir,
            timeout=self.settings.timeout,
            session_id=self.session_id,
            started_at=started,
            environment=environment,
            units=self._deps.units if self._deps is not None else None,
        )
        self._append = self._sender.queue.append
        # With no address configured and a binary to record with, a recorder
        # that is not running is no news: the run is stored locally at its
        # end, and the warning is shown only if that fails. A recorder that
        # is running and refuses the run is news (see _print_warning).
        from . import _binary

        self._hold_warning = self.settings.record_locally and _binary.bundled() is not None
        self._sender.start()
        if self._deps is not None:
            from . import _deps

            _deps.quiet_thread(self._sender.thread_ident)
        if self.settings.quarantine:
            self._start_quarantine()

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node) -> None:
        """xdist: each worker records dependencies when asked to, and gets the
        quarantine list for its own ``-x`` count."""
        if self._deps is not None:
            node.workerinput[WORKER_DEPS] = True
        if not self.settings.quarantine:
            return
        # xdist may set its workers up before this plugin's sessionstart.
        self._start_quarantine()
        if self._quarantine is not None and len(self._quarantine):
            node.workerinput[_quarantine.WORKER_INPUT] = self._quarantine.pairs()

    def _start_quarantine(self) -> None:
        """Fetches the quarantine list, once; on any failure nothing is
        quarantined and one warning line says why."""
        if self._quarantine_tried:
            return
        self._quarantine_tried = True
        addresses = self.settings.addresses
        try:
            project = _environment.project_name(str(self.config.rootpath))
            entries, problem, unreachable = _quarantine.fetch(
                addresses, self.settings.token, self.settings.tls_ca, project)
        except Exception as e:  # never let quarantine break the run
            entries, problem, unreachable = [], str(e), False
        if problem is not None:
            at = ", ".join(addresses)
            if unreachable:
                # The sender is about to find the same: one warning says both.
                self._warned = True
                text = (
                    f"pytest-mcp: warning: cannot reach the recorder at {at} ({problem}): "
                    "no test is quarantined; the run goes on, results are kept and spooled "
                    "if it stays away"
                )
            else:
                text = (
                    f"pytest-mcp: warning: could not fetch the quarantine list from {at} "
                    f"({problem}); no test is quarantined"
                )
            self._write_warning(text)
            return
        self._quarantine = _quarantine.Quarantine(entries)
        self.config.pluginmanager.register(self._quarantine, "mcp-quarantine")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        sender = self._sender
        if sender is None:
            return
        self._sender = None
        # Attempts without a teardown (interrupted inside a test) are not
        # counted by pytest either: they are left out.
        self._open.clear()
        summary = self._summary(int(session.exitstatus))
        result = sender.close(summary)
        if (
            result.spool_path is not None
            and self.settings.record_locally
            and result.nothing_listening
        ):
            local = _record_locally(result.spool_path)
            if local.stored:
                self._lines.append(
                    f"pytest-mcp: session {self.session_id}: {result.outcomes} outcomes recorded "
                    f"in {local.where} (no recorder was running)"
                )
                return
            if local.problem is not None:
                self._lines.append(f"pytest-mcp: could not record in {local.where}: {local.problem}")
        deps = self._deps
        if deps is not None and deps.warning is not None and not self._deps_warned:
            self._deps_warned = True
            self._lines.append(deps.warning)
        if sender.warning is not None and not self._warned:
            # Noticed at the very end: it leads the lines of the terminal summary.
            self._warned = True
            self._lines.append(sender.warning)
        where = f"session {self.session_id}"
        # The recorder that finished the session; with none, every one was tried.
        at = result.address or ", ".join(self.settings.addresses)
        if result.spool_path is not None:
            missing = result.outcomes - result.acked
            self._lines.append(
                f"pytest-mcp: {where}: {missing} of {result.outcomes} outcomes not acknowledged"
                f"{'' if result.finished else ', session not finished'} at {at}; "
                f"spooled to {result.spool_path}"
            )
            self._lines.append(f"pytest-mcp: replay with: pytest-mcp import {result.spool_path}")
        else:
            self._lines.append(
                f"pytest-mcp: {where}: {result.outcomes} outcomes recorded at {at}"
            )

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self._lines:
            for line in self._lines:
                terminalreporter.write_line(line)
            self._printed = True

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        sender = self._sender
        if sender is not None:  # pytest stopped before sessionfinish: spool, no finish
            self._sender = None
            result = sender.close(None)
            if result.spool_path is not None:
                self._lines.append(f"pytest-mcp: spooled to {result.spool_path}")
        if self._lines and not self._printed:
            sys.stderr.write("\n".join(self._lines) + "\n")
            self._printed = True

    def _summary(self, exitstatus: int) -> Dict[str, Any]:
        """pytest's own end-of-run counts (the terminal reporter's), plus exit status."""
        counts = dict(self._counts)
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        stats = getattr(reporter, "stats", None)
        if stats is not None:
            for kind in _KINDS:
                counts[kind] = sum(
                    1 for r in stats.get(kind, ()) if getattr(r, "count_towards_summary", True)
                )
            # Quarantined failures count as what they were (the stored outcomes do).
            for r in stats.get("quarantined", ()):
                counts[_kind(r)] += 1
        summary = {_STATS_KEYS.get(k, k): n for k, n in counts.items()}
        summary["total_tests"] = sum(counts.values())
        summary["exitstatus"] = exitstatus
        # Microseconds: a decimal the importer parses back to the same double.
        summary["duration"] = round(time.perf_counter() - self._t0, 6)
        return summary

    def _print_warning(self, sender: Sender) -> None:
        if self._warned or sender.warning is None:
            return
        if self._hold_warning and sender.listening is not True:
            return  # nothing listens (yet): the run may still be stored locally
        self._warned = True
        self._write_warning(sender.warning)

    def _write_warning(self, text: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(text, yellow=True)
        else:
            sys.stderr.write(text + "\n")

    # ---- results -----------------------------------------------------------

    def pytest_collectreport(self, report) -> None:
        if report.outcome == "passed":
            return
        kind = "error" if report.failed else "skipped"
        nodeid = report.nodeid or "."
        if kind == "skipped":
            message, text = _crash_message(report.longrepr), ""
        else:
            message, text = _crash_message(report.longrepr), report.longreprtext
        path = nodeid.split("::", 1)[0] if nodeid != "." else ""
        self._record(
            (nodeid, kind, "collect", 0.0, message, text, "", "", "", path, None, (),
             report.__dict__.get("worker_id", ""), 1, None, "", (), False, None)
        )

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report) -> None:
        # trylast: after the terminal reporter, whose teststatus hooks may still
        # change a report (pytest marks a test with failed subtests as failed).
        sender = self._sender
        if sender is None:
            return
        if sender.warning is not None and not self._warned:
            self._print_warning(sender)
        d = report.__dict__
        if type(report) is not pytest.TestReport and "context" in d:
            self._subtest(report)
            return
        key = (report.nodeid, d.get("worker_id", ""))
        when = report.when
        state = self._open.get(key)
        if state is None:
            state = self._open[key] = [d.get("start"), 0.0, None, None]
        elif when == "setup":
            # The previous attempt never logged its teardown (older
            # pytest-rerunfailures stop an attempt at the failure): close it.
            self._attempt_done(key, state, state[2])
            state = self._open[key] = [d.get("start"), 0.0, None, None]
        state[1] += report.duration
        if when == "call" or report.outcome != "passed":
            if state[2] is None:
                state[2] = report
            elif state[3] is None:
                state[3] = [report]
            else:
                state[3].append(report)
        if when == "teardown":
            del self._open[key]
            deps = self._take_deps(key[0], d) if self._deps is not None else None
            self._attempt_done(key, state, report, deps)

    def _take_deps(self, nodeid: str, d: Dict[str, Any]):
        """The attempt's dependency keys, from its teardown report (an xdist
        worker's) or from this process's tracer; None when not recorded."""
        handoff = self._deps
        warning = d.get("mcp_deps_warning") or handoff.warning
        if warning and not self._deps_warned:
            self._deps_warned = True
            self._write_warning(str(warning))
        keys = d.get("mcp_deps")
        if keys is None:
            return handoff.pending.pop(nodeid, None)
        units = handoff.units
        try:
            for unit in d.get("mcp_units") or ():
                units.setdefault(int(unit[0]), tuple(unit))
            keys = tuple(int(k) for k in keys)
        except (TypeError, ValueError, IndexError):
            return None
        # A key no unit declares would make the recorder refuse the batch.
        for k in keys:
            if k not in units:
                return None
        return keys

    def _attempt_done(self, key, state, last, deps=None) -> None:
        """Records one attempt; ``last`` is its last report (normally the teardown)."""
        attempts = self._attempts.get(key, 0) + 1
        self._attempts[key] = attempts
        decided = state[2]
        if decided is None:
            return  # nothing ran that pytest counts (e.g. --setup-only)
        rerun = decided.__dict__.get("rerun")  # pytest-rerunfailures: attempts before this one
        attempt = rerun + 1 if rerun is not None else attempts
        path, line = _location(last)
        markers = last.__dict__.get("mcp_markers") or self._markers.get(key[0])
        worker = key[1]
        kind = _kind(decided)
        message, text = _detail(decided, kind)
        if kind == "passed" and self._sender_drops_passing_output():
            out, err, log = "", "", ""
        else:
            out, err, log = _captured(last.sections)
        props = _user_properties(last)
        extras = state[3]
        duration = state[1]
        if extras:
            # A second counted result (a teardown error): its own duration, so
            # durations still add up to the test's time.
            duration -= sum(r.duration for r in extras)
        quarantined = _quarantine.REAL in decided.__dict__
        self._record(
            (key[0], kind, decided.when, duration, message, text, out, err, log, path, line,
             markers, worker, attempt, state[0], "", props, quarantined, deps)
        )
        if extras:
            for extra in extras:
                extra_kind = _kind(extra)
                message, text = _detail(extra, extra_kind)
                self._record(
                    (key[0], extra_kind, extra.when, extra.duration, message, text, "", "", "",
                     path, line, markers, worker, attempt, state[0], "", props, quarantined, deps)
                )

    def _subtest(self, report) -> None:
        d = report.__dict__
        worker = d.get("worker_id", "")
        parent = report.nodeid
        real = d.get(_quarantine.REAL)
        outcome = real[0] if real else report.outcome
        if outcome == "failed":
            kind = "failed"
        elif outcome == "skipped":
            kind = "xfailed" if "wasxfail" in d else "skipped"
        else:
            kind = "passed"
        message, text = _detail(report, kind)
        if kind == "passed" and self._sender_drops_passing_output():
            out, err, log = "", "", ""
        else:
            out, err, log = _captured(report.sections)
        path, line = _location(report)
        self._record(
            (parent, kind, "call", report.duration, message, text, out, err, log, path, line,
             d.get("mcp_markers") or self._markers.get(parent), worker,
             self._attempts.get((parent, worker), 0) + 1, d.get("start"),
             _subtest_label(report, bool(worker)), _user_properties(report),
             _quarantine.REAL in d, None)
        )

    def _sender_drops_passing_output(self) -> bool:
        sender = self._sender
        return sender is not None and sender.keep_passing_output is False

    def _record(self, record: tuple) -> None:
        self._counts[record[R.OUTCOME]] += 1
        self._append(record)
