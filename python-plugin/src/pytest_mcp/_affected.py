"""Affected tests (``--mcp-affected``): run only the tests a change needs.

Before collection, the recorder is asked what each test's newest run
depended on (``GetDependencies``); their checksums now are read from the
working tree (``_deps.current_checksums``, the same rules the recording
used), and the recorder selects (``SelectAffected``): tests whose code
changed, new tests, tests whose last run did not pass, and every test when a
watched file changed. With ``--mcp-base REV`` the change is ``git diff REV``
(plus untracked files) instead. With no recorder running and no address
configured, the bundled binary answers from the local database.

Recorded tests the selection leaves out are deselected at collection
(pytest counts them as "deselected"); a test never recorded is new and runs.
Under xdist the controller selects once and hands the list to each worker,
which deselects in its own collection. Any failure to select runs every test
with one warning: the plugin never makes a run skip tests it cannot vouch for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import pytest

#: The key of the deselection list in an xdist worker's ``workerinput``.
WORKER_INPUT = "mcp_unselected"

#: The selection's whole exchange with the recorder must fit in this many seconds.
DEADLINE = 60.0


class Selection:
    """What the recorder selected: the reasons, and what to deselect."""

    def __init__(self, tests: List[Tuple[str, str]], total: int, confidence: str,
                 notes: List[str], all_: bool, unselected: List[str], change: str) -> None:
        self.tests = tests
        self.total = total
        self.confidence = confidence
        self.notes = notes
        self.all = all_
        self.unselected = unselected
        self.change = change

    def label(self) -> str:
        """How the run chose its tests, as the session records it."""
        if self.all:
            return f"affected: all {self.total} ({self.change})"
        return f"affected: {len(self.tests)} of {self.total} recorded ({self.change})"


def _kind_name(kind: int) -> str:
    from ._proto import recorder_pb2 as pb

    return {
        pb.UNIT_KIND_FUNCTION: "function",
        pb.UNIT_KIND_CLASS: "class",
        pb.UNIT_KIND_MODULE: "module",
        pb.UNIT_KIND_FILE: "file",
    }.get(kind, "")


def _kind_value(name: str) -> int:
    from ._proto import recorder_pb2 as pb

    return {
        "function": pb.UNIT_KIND_FUNCTION,
        "class": pb.UNIT_KIND_CLASS,
        "module": pb.UNIT_KIND_MODULE,
        "file": pb.UNIT_KIND_FILE,
    }[name]


def git_change(rootdir: str, base: str) -> str:
    """``git diff BASE`` in rootdir with the untracked files as new ones: the
    change from BASE to the working tree, as unified diff text."""
    if base.startswith("-") or not base.strip():
        raise ValueError(f"--mcp-base: {base!r} is not a git revision")

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", rootdir, *args], capture_output=True, text=True,
                              errors="replace", stdin=subprocess.DEVNULL, timeout=60)
        if done.returncode != 0:
            raise ValueError(f"git {' '.join(args)}: {done.stderr.strip() or done.returncode}")
        return done.stdout

    text = git("diff", "--no-color", "--no-ext-diff", "--no-renames", "-U0", base, "--")
    for path in git("ls-files", "-o", "--exclude-standard", "-z").split("\0"):
        if path:
            text += (f"diff --git a/{path} b/{path}\nnew file mode 100644\n"
                     f"--- /dev/null\n+++ b/{path}\n")
    return text


def working_tree_now(rootdir: str, refs: Sequence[Tuple[str, str, str]],
                     watch: Sequence[str] = ()) -> Dict[str, Any]:
    """The current checksums of the recorded units (kind, path, name), the
    watched files present now, and the installed-packages digest."""
    from . import _deps

    current = _deps.current_checksums(rootdir, list(refs))
    return {
        "units": [[k, p, n, current.get((k, p, n), "")] for (k, p, n) in refs],
        "watched": _deps.watched_now(rootdir, list(watch) or None),
        "packages": _deps.packages_digest(),
    }


def _select_grpc(addresses: Sequence[str], token: Optional[str], tls_ca: Optional[bytes],
                 project: str, rootdir: str, base: Optional[str]) -> Tuple[Optional[Selection], Optional[str], bool]:
    """Asks the first recorder that answers. Returns the selection, or why
    not and whether no recorder was reachable at all."""
    import grpc

    from ._proto import recorder_pb2 as pb
    from ._proto import recorder_pb2_grpc
    from ._sender import status

    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    deadline = time.monotonic() + DEADLINE
    problems = []
    unreachable = True
    for address in addresses:
        target = address.split("://", 1)[1] if "://" in address else address
        if address.startswith("https://") or tls_ca is not None:
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=tls_ca))
        else:
            channel = grpc.insecure_channel(target)
        try:
            stub = recorder_pb2_grpc.RecorderStub(channel)
            left = lambda: max(0.1, deadline - time.monotonic())  # noqa: E731
            try:
                if base is not None:
                    change = pb.Change(diff=git_change(rootdir, base))
                    described = f"git diff {base}"
                else:
                    deps = stub.GetDependencies(pb.GetDependenciesRequest(project=project),
                                                timeout=min(10.0, left()), metadata=metadata)
                    refs = sorted({(_kind_name(u.kind), u.path, u.name) for u in deps.units})
                    now = working_tree_now(rootdir, refs)
                    change = pb.Change(working_tree=pb.WorkingTree(
                        units=[pb.UnitRef(kind=_kind_value(k), path=p, name=n, checksum=c)
                               for k, p, n, c in now["units"]],
                        watched_files=[pb.UnitRef(kind=pb.UNIT_KIND_FILE, path=p, checksum=c)
                                       for p, c in sorted(now["watched"].items())],
                        packages=now["packages"],
                    ))
                    described = "working tree"
                answer = stub.SelectAffected(
                    pb.SelectAffectedRequest(project=project, change=change),
                    timeout=left(), metadata=metadata)
            except grpc.RpcError as e:
                failure = status(e)
                unreachable = unreachable and not failure.reached
                line = failure.details.strip().split("\n", 1)[0] or failure.code
                if failure.code == "NOT_FOUND":
                    return None, f"no run of project {project!r} is recorded yet", False
                problems.append(f"{address}: {failure.code}: {line}")
                continue
        finally:
            channel.close()
        return Selection(
            [(t.nodeid, t.reason) for t in answer.tests], answer.total, answer.confidence,
            list(answer.notes), answer.all, list(answer.unselected), described,
        ), None, False
    return None, "; ".join(problems) or "no address to ask", unreachable


def _select_locally(project: str, rootdir: str, base: Optional[str]) -> Tuple[Optional[Selection], Optional[str]]:
    """Asks the bundled binary, reading the default local database."""
    from . import _binary

    binary = _binary.bundled()
    if binary is None:
        return None, "no recorder is running and there is no bundled pytest-mcp binary"
    database = _binary.default_database()
    if not os.path.exists(database):
        return None, f"nothing is recorded yet ({_binary.shown(database)} does not exist)"
    args = [binary, "affected", "--format", "json", "--all", "--db", str(database),
            "--project", project]
    if base is not None:
        args += ["--rev", base]
    env = dict(os.environ, PYTEST_MCP_PYTHON=sys.executable)
    done = subprocess.run(args, cwd=rootdir, env=env, capture_output=True, text=True,
                          errors="replace", stdin=subprocess.DEVNULL, timeout=DEADLINE)
    if done.returncode != 0:
        lines = [l for l in done.stderr.splitlines() if l.strip()] or [f"exit status {done.returncode}"]
        return None, lines[-1].removeprefix("pytest-mcp: error: ").removeprefix("pytest-mcp: ")
    view = json.loads(done.stdout)
    return Selection(
        [(t["nodeid"], t["reason"]) for t in view["tests"]], view["total"], view["confidence"],
        view.get("notes", []), view["all"], view.get("unselected", []), view["change"],
    ), None


class Affected:
    """Registered on the process that selects (the xdist controller, or the
    only process): selects at session start, deselects at collection, and
    prints one line saying how many ran and why."""

    def __init__(self, config: pytest.Config, addresses: Sequence[str], token: Optional[str],
                 tls_ca: Optional[bytes], record_locally: bool, base: Optional[str]) -> None:
        self.config = config
        self.addresses = addresses
        self.token = token
        self.tls_ca = tls_ca
        self.record_locally = record_locally
        self.base = base
        self.selection: Optional[Selection] = None
        self._tried = False
        self._line: Optional[str] = None

    def select(self) -> Optional[Selection]:
        """Selects once; on any failure every test runs and one line says why."""
        if self._tried:
            return self.selection
        self._tried = True
        from . import _environment

        rootdir = str(self.config.rootpath)
        project = _environment.project_name(rootdir)
        try:
            selection, problem, unreachable = _select_grpc(
                self.addresses, self.token, self.tls_ca, project, rootdir, self.base)
            if selection is None and unreachable and self.record_locally:
                selection, problem = _select_locally(project, rootdir, self.base)
        except Exception as e:  # selecting must never break the run
            selection, problem = None, f"{type(e).__name__}: {e}"
        if selection is None:
            self._line = f"pytest-mcp: affected: running every test ({problem})"
        self.selection = selection
        return selection

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session) -> None:
        self.select()

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node) -> None:
        selection = self.select()
        if selection is not None and selection.unselected:
            node.workerinput[WORKER_INPUT] = selection.unselected

    def pytest_collection_modifyitems(self, session, config, items) -> None:
        selection = self.selection
        if selection is None:
            return
        kept, dropped = deselect(config, items, set(selection.unselected))
        picked = {n for n, _ in selection.tests}
        new = sum(1 for item in kept if item.nodeid not in picked)
        self._line = summary_line(selection, len(kept), len(kept) + len(dropped), new)
        self._said = True

    def pytest_report_collectionfinish(self, config, items):
        line, self._line = self._line, None
        return line

    def pytest_terminal_summary(self, terminalreporter) -> None:
        # xdist: the controller does not collect; its workers deselect.
        selection = self.selection
        if self._line is None and selection is not None and not getattr(self, "_said", False):
            self._line = summary_line(selection, None, None, None)
        if self._line is not None:
            terminalreporter.write_line(self._line)
            self._line = None


def deselect(config: pytest.Config, items: list, unselected: Set[str]):
    """Drops the recorded tests the selection left out, the way -k does."""
    kept, dropped = [], []
    for item in items:
        (dropped if item.nodeid in unselected else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    return kept, dropped


def _why(selection: Selection, new: Optional[int]) -> str:
    """The reasons, counted by kind."""
    kinds: Dict[str, int] = {}
    for _, reason in selection.tests:
        if reason.startswith(("calls ", "uses class ", "imports ", "reads ")):
            key = "changed code"
        elif "last run" in reason or reason.startswith("flaky"):
            key = "did not pass last time"
        elif reason.startswith("new test"):
            key = "new"
        elif reason.startswith("no recorded dependencies"):
            key = "no recorded dependencies"
        else:
            key = "other"
        kinds[key] = kinds.get(key, 0) + 1
    if new:
        kinds["new"] = kinds.get("new", 0) + new
    return ", ".join(f"{n} {k}" for k, n in kinds.items()) or "no recorded test ran changed code"


def summary_line(selection: Selection, ran: Optional[int], collected: Optional[int],
                 new: Optional[int]) -> str:
    """One line: how many ran of how many, and why."""
    if selection.all:
        why = selection.notes[0] if selection.notes else "every test was affected"
        return f"pytest-mcp: affected: running every test ({why})"
    if ran is None:
        return (f"pytest-mcp: affected: {len(selection.tests)} of {selection.total} recorded tests "
                f"selected by the {selection.change} ({_why(selection, None)}), plus any new test; "
                f"confidence {selection.confidence}")
    return (f"pytest-mcp: affected: running {ran} of {collected} tests, "
            f"{collected - ran} deselected, by the {selection.change} "
            f"({_why(selection, new)}); confidence {selection.confidence}")


class WorkerAffected:
    """On an xdist worker: deselects what the controller's selection left out."""

    def __init__(self, unselected: Sequence[str]) -> None:
        self.unselected = set(unselected)

    def pytest_collection_modifyitems(self, session, config, items) -> None:
        deselect(config, items, self.unselected)
