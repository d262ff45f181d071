"""Spool files: what the recorder did not acknowledge, as JSON lines (docs/spool.md).

``pytest-mcp import FILE`` replays a spool file; every outcome carries its
(session id, seq), so a replay stores nothing twice. With dependencies, a
``units`` line declares each unit once per file, before the first outcome
that names it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from . import _records as R

# A units line stays far below the importer's 16 MiB line limit.
MAX_UNITS_PER_LINE = 1000
MAX_UNITS_LINE_BYTES = 4 * 1024 * 1024


def default_dir() -> Path:
    """The per-user data directory the server also uses, plus ``spool``."""
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "pytest-mcp" / "spool"


def rfc3339(seconds: Optional[float]) -> Optional[str]:
    """UTC RFC 3339 text with microseconds, e.g. 2026-11-24T09:14:38.123456Z."""
    if seconds is None:
        return None
    whole = int(seconds)
    micros = int(round((seconds - whole) * 1_000_000))
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{micros:06d}Z"


def outcome_line(session_id: str, seq: int, r: Tuple, keep_passing_output: bool = False) -> Dict[str, Any]:
    """One spool ``outcome`` object; empty text fields are left out, as the format allows,
    and so is the captured output of a passing test unless it is to be kept."""
    line: Dict[str, Any] = {
        "type": "outcome",
        "session_id": session_id,
        "seq": seq,
        "nodeid": r[R.NODEID],
        "outcome": r[R.OUTCOME],
        "phase": r[R.PHASE],
        "duration": r[R.DURATION],
        "line": r[R.LINE],
        "attempt": r[R.ATTEMPT],
        "started_at": rfc3339(r[R.STARTED]),
    }
    drop_output = r[R.OUTCOME] == "passed" and not keep_passing_output
    for key, index in R.TEXT_FIELDS:
        if r[index] and not (drop_output and index in R.OUTPUT_FIELDS):
            line[key] = r[index]
    if r[R.MARKERS]:
        line["markers"] = list(r[R.MARKERS])
    if r[R.PROPERTIES]:
        line["user_properties"] = [list(p) for p in r[R.PROPERTIES]]
    if r[R.QUARANTINED]:
        line["quarantined"] = True
    deps = r[R.DEPS]
    if deps is not None:
        line["deps"] = [format(k, "016x") for k in deps]
    return line


def unit_object(unit: Tuple) -> Dict[str, Any]:
    """One unit of a ``units`` line (a unit tuple of ``_deps``)."""
    return {
        "key": format(unit[0], "016x"),
        "code": format(unit[1], "016x"),
        "kind": unit[2],
        "path": unit[3],
        "name": unit[4],
        "line_start": unit[5],
        "line_end": unit[6],
        "checksum": unit[7],
    }


class SpoolFile:
    """A spool file being written: the start line first, then outcomes, then finish."""

    def __init__(
        self,
        directory: Path,
        session_id: str,
        start: Dict[str, Any],
        units: Optional[Dict[int, Tuple]] = None,
    ) -> None:
        """``units``: key -> unit tuple, for the outcomes' dependencies (None: not recorded)."""
        directory.mkdir(parents=True, exist_ok=True)
        self._units = units
        self._units_written: set = set()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.path = directory / f"pytest-mcp-{stamp}-{session_id}.jsonl"
        self.session_id = session_id
        # Lone surrogates (undecodable bytes in captured output) become "?":
        # the file must be valid UTF-8 for the importer.
        self._file = open(self.path, "w", encoding="utf-8", errors="replace", newline="\n")
        self._write(start)

    def _write(self, obj: Dict[str, Any]) -> None:
        self._file.write(json.dumps(obj, ensure_ascii=False, allow_nan=False))
        self._file.write("\n")

    def outcomes(self, items: Iterable[Tuple[int, Tuple]], keep_passing_output: bool = False) -> int:
        """Appends (seq, record) pairs, after the units they name that the file
        does not declare yet; returns how many outcomes."""
        items = list(items)
        if self._units is not None:
            self._declare(items)
        n = 0
        for seq, record in items:
            self._write(outcome_line(self.session_id, seq, record, keep_passing_output))
            n += 1
        return n

    def _declare(self, items: List[Tuple[int, Tuple]]) -> None:
        units = self._units
        written = self._units_written
        line: List[Dict[str, Any]] = []
        size = 0
        for _seq, record in items:
            for k in record[R.DEPS] or ():
                if k in written:
                    continue
                unit = units.get(k)
                if unit is None:
                    continue
                written.add(k)
                line.append(unit_object(unit))
                size += 200 + len(unit[3]) + len(unit[4])
                if len(line) >= MAX_UNITS_PER_LINE or size >= MAX_UNITS_LINE_BYTES:
                    self._write({"type": "units", "session_id": self.session_id, "units": line})
                    line, size = [], 0
        if line:
            self._write({"type": "units", "session_id": self.session_id, "units": line})

    def finish(self, obj: Dict[str, Any]) -> None:
        self._write(obj)

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
