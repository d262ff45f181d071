"""A pytest plugin for the benchmarks: writes what a run collected, selected and failed.

Loaded with ``-p bench_probe`` (``bench/probe`` on ``PYTHONPATH``); idle unless
``BENCH_PROBE_OUT`` names a file. At the end of the session it writes one JSON object there:

    collected   node ids of the items that run, after every plugin's deselection
    deselected  how many items plugins deselected (pytest_deselected)
    failed      node ids with a failed or errored setup, call or teardown
    collect_errors  node ids of collectors that failed (a module that does not import)
    durations   node id -> seconds of setup + call + teardown
    exitstatus  pytest's exit status

``pytest_collection_finish`` runs after every ``pytest_collection_modifyitems``, so
``collected`` is the selection that ``--mcp-affected`` (or ``-k``, ``--deselect``) left.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List


class _Probe:
    def __init__(self, path: str) -> None:
        self.path = path
        self.collected: List[str] = []
        self.deselected = 0
        self.failed: List[str] = []
        self.collect_errors: List[str] = []
        self.durations: Dict[str, float] = {}

    def pytest_deselected(self, items) -> None:
        self.deselected += len(items)

    def pytest_collectreport(self, report) -> None:
        if report.failed:
            self.collect_errors.append(report.nodeid)

    def pytest_collection_finish(self, session) -> None:
        self.collected = [item.nodeid for item in session.items]

    def pytest_runtest_logreport(self, report) -> None:
        self.durations[report.nodeid] = self.durations.get(report.nodeid, 0.0) + report.duration
        if report.failed and report.nodeid not in self.failed:
            self.failed.append(report.nodeid)

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        data = {
            "collected": self.collected,
            "deselected": self.deselected,
            "failed": self.failed,
            "collect_errors": self.collect_errors,
            "durations": self.durations,
            "exitstatus": int(exitstatus),
        }
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.path)


def pytest_configure(config) -> None:
    path = os.environ.get("BENCH_PROBE_OUT")
    # Only on the xdist controller (workers have `workerinput`): it sees every report.
    if path and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_Probe(path), "bench-probe")
