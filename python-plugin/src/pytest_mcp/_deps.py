"""Per-test dependencies (``--mcp-deps``): the code under rootdir a test ran, and the files it read.

A test depends on *units*, each a tuple (see ``KEY`` ... ``CHECKSUM``):

* ``function``: a def at module level or in a class body (also inside an
  ``if``/``try``/``with``... of that scope, which Python names the same way),
  named like its ``__qualname__`` ("Parser.parse", "Outer.Inner.m"). Functions
  defined inside a function, lambdas and comprehensions belong to it.
* ``class``: a class body without its methods' bodies.
* ``module``: a module's top-level code without its defs' and classes' bodies
  (name ""). Every test that ran any unit of a file depends on it, and a
  method brings its classes: that code ran at import, before any test.
* ``file``: a data file the test opened for reading (name "", lines 0).

A unit's checksum covers its normalised source, so comments and formatting do
not count while docstrings and decorators do: a canonical dump of its AST
(``_dump``; a def or class nested in a class or module stands in as its name
alone). The dump is ours rather than ``ast.dump`` because ``ast.dump``'s text
differs between the Pythons one project is tested with (3.12 added
``type_params``, 3.13 leaves empty fields out): the same source must give the
same checksum on each, or a CI matrix would see every test change. Two defs
with one qualified name in a file (a property's getter and setter) are told
apart by their order: the second is "C.x#2". A file ``ast`` cannot parse is one
module unit with the checksum of its bytes.

Invariants: recording and ``current_checksums`` share ``_analyse``, so a unit
that did not change has the checksum it was recorded with; a code object is
resolved once per process (per file, by its first line and name); a test
whose dependencies may be incomplete (another tracer took over, too many
units) gets ``None``, never a smaller set; any exception in here turns
recording off for the rest of the run with one warning, and the run goes on.

Tracing: on Python 3.12+ ``sys.monitoring`` (tool ids 3 and 4), PY_START
only; the callback adds the code object and disables the event for it, and
each test re-arms what it needs (see ``_Monitoring``), so a test pays once per
code object it runs. Before 3.12, ``sys.settrace`` for the main thread and
``threading.settrace`` for threads started in a test, installed for the test
only; a trace function someone else set (coverage, a debugger) is never
replaced: tests run while it is there have no dependencies. Files read are
seen by one audit hook (it cannot be removed; without an active test it is a
string comparison). Code run in subprocesses, and files read by C code
(``fopen``), are not seen.
"""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import os
import re
import stat
import subprocess
import sys
import sysconfig
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import pytest

# Indexes into a unit tuple; the spool's "units" line and CodeUnit use the
# same fields.
KEY = 0  # int: blake2b of kind, path, name, span and checksum (8 bytes, big-endian)
CODE = 1  # int: the same without the span
KIND = 2  # "function" "class" "module" "file"
PATH = 3  # relative to rootdir, "/"-separated
NAME = 4  # qualified name; "" for a module or a file
START = 5  # first line (first decorator); 0 for a file
END = 6  # last line; 0 for a file
CHECKSUM = 7  # lowercase hex

FUNCTION = "function"
CLASS = "class"
MODULE = "module"
FILE = "file"
#: UnitKind numbers of the wire, by kind word.
KIND_NUMBERS = {FUNCTION: 1, CLASS: 2, MODULE: 3, FILE: 4}
_KIND_WORDS = {number: word for word, number in KIND_NUMBERS.items()}

#: The recorder refuses a test with more units than this; such a test gets none.
MAX_TEST_UNITS = 100_000

#: Files that can change any test without being any test's dependency. A
#: pattern with "/" is matched against the path relative to rootdir ("**/"
#: at any depth, rootdir included); one without, against the files at rootdir.
WATCHED_PATTERNS = (
    "**/conftest.py",
    "pytest.ini",
    "pyproject.toml",
    "setup.cfg",
    "setup.py",
    "tox.ini",
    "requirements*.txt",
    "constraints*.txt",
    "*.lock",
    "Pipfile",
    "Pipfile.lock",
    "poetry.lock",
    "uv.lock",
)
#: The environment's watched files stay this small: the recorder refuses an
#: environment over 256 KiB. Past it, the paths after it in sorted order are
#: left out (and ``watched_files_cut`` says how many).
MAX_WATCHED_BYTES = 128 * 1024
#: How long the watched files' listing may take, git or walk.
WATCH_BUDGET = 5.0
#: Most directory entries the walk (without git) looks at.
MAX_WALK_ENTRIES = 200_000

# Directories whose files are never dependencies: tools' caches and
# installed packages. Matched against each component of a path under rootdir.
_NOT_PROJECT_DIRS = frozenset(
    {
        ".git",
        "__pycache__",
        "site-packages",
        "dist-packages",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        ".hypothesis",
        ".tox",
        ".nox",
    }
)
# Directories the watched-files walk skips (besides hidden ones and
# virtual environments, which hold a pyvenv.cfg).
_UNWATCHED_DIRS = frozenset(
    {"__pycache__", "node_modules", "build", "dist", "site-packages", "dist-packages", "venv"}
)
_SOURCE_SUFFIXES = (".py", ".pyc", ".pyo")
_WRITE_MODE = frozenset("wax+")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR
_CHUNK = 1 << 20


# ---- units, checksums and keys ------------------------------------------------


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def make_unit(kind: str, path: str, name: str, start: int, end: int, checksum: str) -> tuple:
    """A unit tuple with its key and code."""
    key = hashlib.blake2b(
        f"{kind}\0{path}\0{name}\0{start}\0{end}\0{checksum}".encode(), digest_size=8
    ).digest()
    code = hashlib.blake2b(f"{kind}\0{path}\0{name}\0{checksum}".encode(), digest_size=8).digest()
    return (
        int.from_bytes(key, "big"),
        int.from_bytes(code, "big"),
        kind,
        path,
        name,
        start,
        end,
        checksum,
    )


def _dump(node: ast.AST) -> str:
    """Canonical text of an AST: node types and their non-empty fields by name.

    Iterative, as deep expressions (a long chain of ``+``) nest deeper than
    the recursion limit. Fields that are None or [] are left out, so a field
    a newer Python adds with an empty default changes nothing.
    """
    out: List[str] = []
    put = out.append
    stack: List[Any] = [node]
    pop = stack.pop
    extend = stack.extend
    AST = ast.AST
    while stack:
        item = pop()
        if item.__class__ is str:
            put(item)
            continue
        seq: List[Any] = [type(item).__name__ + "("]
        for field in item._fields:
            value = getattr(item, field, None)
            if value is None or value == []:
                continue
            seq.append(field + "=")
            if isinstance(value, AST):
                seq.append(value)
            elif isinstance(value, list):
                seq.append("[")
                for element in value:
                    seq.append(element if isinstance(element, AST) else repr(element))
                    seq.append(",")
                seq.append("]")
            else:
                seq.append(repr(value))
            seq.append(",")
        seq.append(")")
        seq.reverse()
        extend(seq)
    return "".join(out)


def _stand_in(name: str) -> ast.AST:
    """What a nested def or class is in its scope's dump: its name alone."""
    return ast.Name(id=name, ctx=ast.Load())


def _inner_bodies(stmt: ast.AST):
    """The statement lists of a compound statement (if, for, while, try, with, match)."""
    for field in stmt._fields:
        value = getattr(stmt, field, None)
        if value.__class__ is list and value:
            first = value[0]
            if isinstance(first, ast.stmt):
                yield value
            elif isinstance(first, (ast.excepthandler, getattr(ast, "match_case", ast.excepthandler))):
                for handler in value:
                    yield handler.body


def _line_count(data: bytes) -> int:
    lines = data.count(b"\n")
    if data and not data.endswith(b"\n"):
        lines += 1
    return max(lines, 1)


class _Analysis:
    """A Python file's units, and what maps its code objects to them."""

    __slots__ = ("units", "module", "_defs", "_spans", "_implied", "_memo")

    def __init__(self, units, module, defs, spans, implied) -> None:
        #: Unit tuples: functions and classes in source order, the module last.
        self.units = units
        self.module = module  # the module unit's key
        self._defs = defs  # (first line, simple name) -> index
        self._spans = spans  # (start, end, index) of functions and classes
        self._implied = implied  # index -> keys: the unit, its classes, the module
        self._memo: Dict[Tuple[int, str], Tuple[int, ...]] = {}

    def import_keys(self) -> Tuple[int, ...]:
        """The units importing the file ran: its module body and class bodies."""
        return (self.module,) + tuple(
            u[KEY] for u in self.units if u[KIND] == CLASS
        )

    def keys_for(self, line: int, name: str) -> Tuple[int, ...]:
        """The unit keys running a code object (first line, name) means."""
        memo_key = (line, name)
        keys = self._memo.get(memo_key)
        if keys is None:
            index = None if name == "<module>" else self._defs.get(memo_key)
            if index is None and name != "<module>":
                best = None
                for start, end, candidate in self._spans:
                    if start <= line <= end and (best is None or start >= best[0]):
                        best = (start, candidate)
                index = best[1] if best is not None else None
            keys = self._implied[index] if index is not None else (self.module,)
            self._memo[memo_key] = keys
        return keys


def _analyse(path: str, data: bytes) -> _Analysis:
    """The units of one Python file (``path`` relative to rootdir, "/"-separated)."""
    last = _line_count(data)
    try:
        tree = ast.parse(data)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        module = make_unit(MODULE, path, "", 1, last, _digest(data))
        return _Analysis([module], module[KEY], {}, [], {})
    # [kind, name, start, end, checksum, enclosing class indexes, simple name]
    found: List[Optional[list]] = []
    counts: Dict[str, int] = {}

    def qualify(qualname: str) -> str:
        n = counts.get(qualname, 0) + 1
        counts[qualname] = n
        return qualname if n == 1 else f"{qualname}#{n}"

    def scope(body: list, prefix: str, classes: tuple) -> None:
        for i, stmt in enumerate(body):
            kind = type(stmt)
            if kind is ast.FunctionDef or kind is ast.AsyncFunctionDef or kind is ast.ClassDef:
                start = stmt.decorator_list[0].lineno if stmt.decorator_list else stmt.lineno
                name = qualify(prefix + stmt.name)
                if kind is ast.ClassDef:
                    index = len(found)
                    found.append(None)
                    scope(stmt.body, f"{prefix}{stmt.name}.", classes + (index,))
                    found[index] = [CLASS, name, start, stmt.end_lineno, _digest(_dump(stmt).encode()),
                                    classes, stmt.name]
                else:
                    found.append([FUNCTION, name, start, stmt.end_lineno,
                                  _digest(_dump(stmt).encode()), classes, stmt.name])
                body[i] = _stand_in(stmt.name)
            else:
                for inner in _inner_bodies(stmt):
                    scope(inner, prefix, classes)

    try:
        scope(tree.body, "", ())
    except RecursionError:  # nested deeper than Python recurses: one unit, as if unparsed
        module = make_unit(MODULE, path, "", 1, last, _digest(data))
        return _Analysis([module], module[KEY], {}, [], {})
    module = make_unit(MODULE, path, "", 1, last, _digest(_dump(tree).encode()))
    units = [make_unit(k, path, name, start, end, checksum)
             for k, name, start, end, checksum, _classes, _simple in found]
    defs: Dict[Tuple[int, str], int] = {}
    spans = []
    implied: Dict[int, Tuple[int, ...]] = {}
    for index, (kind, _name, start, end, _checksum, classes, simple) in enumerate(found):
        defs[(start, simple)] = index
        spans.append((start, end, index))
        implied[index] = (units[index][KEY], *(units[c][KEY] for c in classes), module[KEY])
    units.append(module)
    return _Analysis(units, module[KEY], defs, spans, implied)


def _file_checksum(path: str) -> Optional[str]:
    """blake2b (16 bytes, hex) of a regular file's bytes; None when it is not one."""
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            h = hashlib.blake2b(digest_size=16)
            while True:
                chunk = f.read(_CHUNK)
                if not chunk:
                    return h.hexdigest()
                h.update(chunk)
    except OSError:
        return None


def _normalise_kind(kind: Any) -> Optional[str]:
    if isinstance(kind, int):
        return _KIND_WORDS.get(kind)
    text = str(kind).lower()
    if text.startswith("unit_kind_"):
        text = text[len("unit_kind_"):]
    return text if text in KIND_NUMBERS else None


def _inside(root: str, path: str) -> Optional[str]:
    """The absolute path of ``path`` (relative to root, "/"-separated) when it stays under root."""
    if not path or path.startswith("/") or "\\" in path or os.path.isabs(path):
        return None
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    return os.path.join(root, *parts)


def current_checksums(rootdir: Any, refs: Iterable[Tuple[Any, str, str]]) -> Dict[tuple, str]:
    """The checksum each (kind, path, name) has in the working tree now, by the rules
    it was recorded with; "" when its file or the unit is gone.

    ``kind`` is the word ("function", ...) or the UnitKind number; the answer is
    keyed by the refs as given. A path that would leave rootdir is "".
    """
    root = os.path.abspath(os.fspath(rootdir))
    tables: Dict[str, Dict[Tuple[str, str], str]] = {}
    out: Dict[tuple, str] = {}
    for ref in refs:
        kind_given, path, name = ref
        kind = _normalise_kind(kind_given)
        full = _inside(root, path)
        if kind is None or full is None:
            out[ref] = ""
            continue
        if kind == FILE:
            out[ref] = _file_checksum(full) or ""
            continue
        table = tables.get(path)
        if table is None:
            table = tables[path] = {}
            try:
                with open(full, "rb") as f:
                    data = f.read()
            except OSError:
                data = None
            if data is not None:
                for unit in _analyse(path, data).units:
                    table[(unit[KIND], unit[NAME])] = unit[CHECKSUM]
        out[ref] = table.get((kind, name or ""), "")
    return out


# ---- watched files and installed packages ---------------------------------------


def _git_files(root: str, deadline: float) -> Optional[List[str]]:
    """Tracked and untracked, not ignored files under root (relative paths), or None."""
    try:
        done = subprocess.run(
            ["git", "-C", root, "ls-files", "-co", "--exclude-standard", "-z"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=max(0.1, deadline - time.monotonic()),
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return [os.fsdecode(p) for p in done.stdout.split(b"\0") if p]


def _walk_files(root: str, deadline: float) -> List[str]:
    """Files under root by a walk that skips hidden directories, virtual
    environments and build output, bounded in entries and time."""
    out: List[str] = []
    seen = 0
    for top, dirs, files in os.walk(root):
        seen += len(dirs) + len(files)
        if seen > MAX_WALK_ENTRIES or time.monotonic() > deadline:
            break
        dirs[:] = sorted(
            d for d in dirs
            if not d.startswith(".") and d not in _UNWATCHED_DIRS
            and not os.path.exists(os.path.join(top, d, "pyvenv.cfg"))
        )
        rel = os.path.relpath(top, root)
        for name in files:
            out.append(name if rel == "." else os.path.join(rel, name))
    return out


def _watched_match(rel: str, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        if pattern.startswith("**/"):
            tail = pattern[3:]
            if fnmatch.fnmatchcase(rel, tail) or fnmatch.fnmatchcase(rel, "*/" + tail):
                return True
        elif "/" in pattern:
            if fnmatch.fnmatchcase(rel, pattern):
                return True
        elif "/" not in rel and fnmatch.fnmatchcase(rel, pattern):
            return True
    return False


def watched_now(rootdir: Any, patterns: Optional[Sequence[str]] = None) -> Dict[str, str]:
    """Path relative to rootdir -> checksum (blake2b of the bytes, 16, hex) of each
    watched file present now (``WATCHED_PATTERNS`` unless given), sorted by path."""
    root = os.path.abspath(os.fspath(rootdir))
    patterns = tuple(WATCHED_PATTERNS if patterns is None else patterns)
    deadline = time.monotonic() + WATCH_BUDGET
    candidates: List[str] = []
    try:
        candidates = [e.name for e in os.scandir(root) if e.is_file()]
    except OSError:
        return {}
    if any("/" in p for p in patterns):
        deep = _git_files(root, deadline)
        if deep is None:
            deep = _walk_files(root, deadline)
        for rel in deep:
            rel = rel.replace(os.sep, "/")
            parts = rel.split("/")
            if len(parts) < 2:
                continue  # at rootdir: listed above
            dirs = parts[:-1]
            if any(d.startswith(".") or d in _UNWATCHED_DIRS for d in dirs):
                continue
            candidates.append(rel)
    out: Dict[str, str] = {}
    for rel in sorted(set(candidates)):
        if _watched_match(rel, patterns):
            checksum = _file_checksum(os.path.join(root, *rel.split("/")))
            if checksum is not None:
                out[rel] = checksum
    return out


def bounded_watched(watched: Dict[str, str]) -> Tuple[Dict[str, str], int]:
    """At most ``MAX_WATCHED_BYTES`` of watched files (rootdir's own first), and how many were cut."""
    order = sorted(watched, key=lambda p: (p.count("/"), p))
    kept: Dict[str, str] = {}
    size = 0
    for path in order:
        size += len(path.encode("utf-8", "replace")) + len(watched[path]) + 8
        if size > MAX_WATCHED_BYTES:
            return dict(sorted(kept.items())), len(order) - len(kept)
        kept[path] = watched[path]
    return dict(sorted(kept.items())), 0


_NAME_SEPARATORS = re.compile(r"[-_.]+")


def packages_digest() -> str:
    """blake2b (16 bytes, hex) of the sorted "name==version" lines of the installed
    distributions (names normalised as installers compare them)."""
    import importlib.metadata

    lines = set()
    for dist in importlib.metadata.distributions():
        try:
            name = dist.metadata["Name"]
            version = dist.version
        except Exception:  # a broken distribution's metadata: leave it out
            continue
        if name:
            lines.add(f"{_NAME_SEPARATORS.sub('-', name).lower()}=={version}")
    return _digest("\n".join(sorted(lines)).encode())


# ---- which files are the project's ----------------------------------------------


class _Project:
    """Decides which files under rootdir are the project's: its Python code, and data files."""

    def __init__(self, rootdir: str, also_excluded: Sequence[str] = ()) -> None:
        """``also_excluded``: more directories whose files are not the project's."""
        root = os.path.normpath(os.path.abspath(rootdir))
        self.root = root
        self.prefix = root.rstrip(os.sep) + os.sep
        real = os.path.realpath(root)
        self.real_prefix = None if real == root else real.rstrip(os.sep) + os.sep
        paths = sysconfig.get_paths()
        candidates = {
            sys.prefix, sys.base_prefix, sys.exec_prefix, getattr(sys, "base_exec_prefix", sys.prefix),
            paths.get("stdlib"), paths.get("platstdlib"), paths.get("purelib"), paths.get("platlib"),
            os.path.dirname(os.path.abspath(__file__)),
            *also_excluded,
        }
        # Only what lies inside rootdir can exclude anything (a project under
        # sys.prefix, as with a system Python, stays the project).
        self.excluded = tuple(
            sorted(
                os.path.normpath(os.path.abspath(p)).rstrip(os.sep) + os.sep
                for p in candidates
                if p and os.path.normpath(os.path.abspath(p)).startswith(self.prefix)
            )
        )

    def absolute(self, path: Any) -> Optional[str]:
        """An opened path as an absolute path under rootdir, else None."""
        if isinstance(path, int):
            return None
        path = os.fspath(path)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        path = os.path.normpath(os.path.abspath(path))
        if path.startswith(self.prefix):
            return path
        if self.real_prefix is not None:
            real = os.path.realpath(path)
            if real.startswith(self.real_prefix):
                return self.prefix + real[len(self.real_prefix):]
        return None

    def relative(self, path: str) -> Optional[str]:
        """rootdir-relative "/"-separated path of a project file, or None."""
        if not path.startswith(self.prefix):
            absolute = self.absolute(path)
            if absolute is None:
                return None
            path = absolute
        for excluded in self.excluded:
            if path.startswith(excluded):
                return None
        rel = path[len(self.prefix):]
        parts = rel.split(os.sep)
        if any(part in _NOT_PROJECT_DIRS for part in parts):
            return None
        rel = "/".join(parts)
        try:
            rel.encode("utf-8")
        except UnicodeError:  # undecodable bytes in a name: no wire can carry it
            return None
        return rel


# ---- tracing ----------------------------------------------------------------------


class _Unavailable(Exception):
    """Dependencies cannot be recorded in this process; the message says why."""


class _Monitoring:
    """Python 3.12+: sys.monitoring, PY_START only, each event disabled after its first hit.

    With two free tool ids, a scout (global events) sees each code object once
    per process and, for the project's code only, arms the recorder's local
    events; re-arming for a test then costs a toggle per project code object
    the previous test ran, not the re-instrumentation of everything pytest
    runs per test that ``restart_events`` would cause (click's suite: about 50
    project code objects of about 300 per test). With one free id, the
    recorder watches everything and each test calls ``restart_events``.
    """

    def __init__(self, is_project: Callable[[Any], bool]) -> None:
        mon = sys.monitoring
        free = [tool for tool in (3, 4) if mon.get_tool(tool) is None]  # 0 debuggers, 1 coverage, 2 profilers
        if not free:
            raise _Unavailable("sys.monitoring tool ids 3 and 4 are both in use")
        self._mon = mon
        self._event = event = mon.events.PY_START
        #: The active frame's codes (id -> code object), or None between tests.
        self._current: List[Optional[dict]] = [None]
        #: Project code objects whose recorder event fired since the last re-arm.
        self._fired: Dict[int, Any] = {}
        #: Every code object the scout armed (to disarm at the end).
        self._armed: Dict[int, Any] = {}
        current, fired, armed = self._current, self._fired, self._armed
        disable = mon.DISABLE
        recorder = free[0]
        mon.use_tool_id(recorder, "pytest-mcp")
        self._recorder = recorder
        self._scout: Optional[int] = free[1] if len(free) > 1 else None

        # Keyed by id, holding the code: hashing a code object hashes its
        # constants, nested code included (about 1 us a function on 3.12).
        def record(code, offset, _current=current, _fired=fired, _id=id, _disable=disable):
            key = _id(code)
            _fired[key] = code
            seen = _current[0]
            if seen is not None:
                seen[key] = code
            return _disable

        mon.register_callback(recorder, event, record)
        if self._scout is None:
            mon.set_events(recorder, event)
            return
        mon.use_tool_id(self._scout, "pytest-mcp-scout")
        set_local = mon.set_local_events

        def scout(code, offset, _current=current, _armed=armed, _id=id, _disable=disable):
            try:
                if is_project(code):
                    key = _id(code)
                    _armed[key] = code
                    set_local(recorder, code, event)  # from its next start on
                    seen = _current[0]
                    if seen is not None:
                        seen[key] = code  # this start
            except Exception:  # raised here, it would be raised in the test's code
                pass
            return _disable

        mon.register_callback(self._scout, event, scout)
        mon.set_events(self._scout, event)

    def activate(self, codes: dict, restart: bool) -> None:
        self._current[0] = codes
        if not restart:
            return
        if self._scout is None:
            self._mon.restart_events()
            return
        fired = self._fired
        if fired:
            set_local, recorder, event = self._mon.set_local_events, self._recorder, self._event
            # One at a time: a thread of the tests may add to it meanwhile,
            # and what it adds must be re-armed too (now or next time).
            pop = fired.popitem
            while fired:
                code = pop()[1]
                set_local(recorder, code, 0)
                set_local(recorder, code, event)

    def deactivate(self) -> bool:
        """Stops recording into the current frame; whether it saw everything."""
        self._current[0] = None
        return True

    def stop(self) -> None:
        mon = self._mon
        self._current[0] = None
        try:
            # Local events first: they need the tool id still in use.
            for code in self._armed.values():
                mon.set_local_events(self._recorder, code, 0)
        finally:
            self._armed.clear()
            self._fired.clear()
            for tool in (self._scout, self._recorder):
                if tool is None:
                    continue
                try:
                    mon.set_events(tool, 0)
                    mon.register_callback(tool, self._event, None)
                finally:
                    mon.free_tool_id(tool)


class _Settrace:
    """Python 3.9-3.11: a global trace function that records each frame's code and
    traces no lines; installed for a test's duration only."""

    def __init__(self) -> None:
        self._current: Optional[Callable] = None
        self.foreign = False  # someone else's trace function was there

    def activate(self, codes: dict, restart: bool) -> None:
        present = sys.gettrace()
        if present is not None and present is not self._current:
            self.foreign = True
            return

        # By id, holding the code: hashing a code object is slow (see _Monitoring).
        def trace(frame, event, arg, _codes=codes, _id=id):
            # The global trace function only ever sees "call".
            code = frame.f_code
            _codes[_id(code)] = code

        self._current = trace
        sys.settrace(trace)
        threading.settrace(trace)

    def deactivate(self) -> bool:
        current = self._current
        self._current = None
        complete = current is not None and sys.gettrace() is current and not self.foreign
        if sys.gettrace() is current:
            sys.settrace(None)
        if getattr(threading, "_trace_hook", None) is current:
            threading.settrace(None)  # type: ignore[arg-type]
        self.foreign = False
        return complete

    def stop(self) -> None:
        self.deactivate()


# The audit hook's destination: None, or the append of the active frame's
# list. One hook per process, as hooks cannot be removed.
_AUDIT_TARGET: List[Optional[Callable]] = [None]
_AUDIT_PROJECT: List[Optional[_Project]] = [None]
# Threads whose opens are never a test's: the sender's, which reads the
# watched files while the first tests run.
_QUIET_THREADS: set = set()
_audit_installed = False


def quiet_thread(ident: Optional[int]) -> None:
    """Files this thread opens are nobody's dependency."""
    if ident is not None:
        _QUIET_THREADS.add(ident)


def _install_audit_hook() -> None:
    global _audit_installed
    if _audit_installed:
        return
    target = _AUDIT_TARGET
    project = _AUDIT_PROJECT
    quiet = _QUIET_THREADS
    get_ident = threading.get_ident

    def audit(event, args):
        if event == "open" and target[0] is not None:
            try:
                path = args[0]
                where = project[0]
                if path.__class__ is not str or not path.startswith(where.prefix):
                    # Relative (to the cwd of now), bytes, a path object or a
                    # descriptor: made absolute here, while the cwd is right.
                    path = where.absolute(path)
                    if path is None:
                        return
                if quiet and get_ident() in quiet:
                    return
                target[0]((path, args[1], args[2]))
            except Exception:  # an audit hook that raises would fail the open()
                pass

    sys.addaudithook(audit)
    _audit_installed = True


class _Frame:
    """What one test (or a wider fixture's setup inside it) ran and read."""

    __slots__ = ("codes", "opens", "keys")

    def __init__(self) -> None:
        self.codes: Dict[int, Any] = {}  # id -> code object (kept alive, so ids stay unique)
        self.opens: list = []
        self.keys: set = set()  # resolved already (wider fixtures set up inside it)


class Handoff:
    """Shared by the tracer and the reporter of the process that runs the tests
    (without xdist): units by key, and each finished test's keys until its
    teardown report is recorded."""

    def __init__(self) -> None:
        #: key -> unit tuple; only ever added to (the sender thread reads it).
        self.units: Dict[int, tuple] = {}
        #: nodeid -> sorted tuple of keys, from the teardown's makereport to its logreport.
        self.pending: Dict[str, Tuple[int, ...]] = {}
        #: A warning line for the reporter to print once.
        self.warning: Optional[str] = None


class Tracer:
    """The plugin object recording dependencies where tests run (the only
    process, or an xdist worker); see the module docstring."""

    def __init__(self, config, handoff: Optional[Handoff]) -> None:
        """``handoff`` None: an xdist worker, which puts keys and new units on
        the teardown reports (``mcp_deps``, ``mcp_units``) instead."""
        # Tests' temporary directories are theirs, not the project's, even
        # when --basetemp puts them under rootdir.
        basetemp = config.getoption("basetemp", None)
        also = [os.path.abspath(os.fspath(basetemp))] if basetemp else []
        self._project = _Project(os.fspath(config.rootpath), also)
        self._handoff = handoff
        self._units: Dict[int, tuple] = handoff.units if handoff is not None else {}
        self._sent: set = set()  # keys a worker has put on a report already
        self._backend: Any = None
        self._broken = False
        self._frames: List[_Frame] = []
        self._incomplete = False  # the current test's set may miss something
        self._files: Dict[str, Optional[_Analysis]] = {}  # co_filename -> its units
        self._project_files: Dict[str, bool] = {}  # co_filename -> is the project's
        self._data: Dict[str, Tuple[tuple, Optional[int]]] = {}  # path -> (stat, key)
        self._fixture_keys: Dict[Any, set] = {}  # wider fixturedef -> keys of its setup
        self._warning: Optional[str] = None  # not yet handed on
        self._noted_foreign = False
        #: What ran at import (collection), given to every test: see pytest_collection.
        self._import_frame: Optional[_Frame] = None
        self._import_keys: frozenset = frozenset()

    # ---- hooks ----------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(self, session) -> None:
        # Code that runs at import (module and class bodies, default values,
        # the functions they call to build tables) runs once, while pytest
        # collects, before any test; a test that reads what it built depends
        # on it without running it. So what collection runs is recorded too,
        # and every test depends on it.
        if self._broken:
            return
        try:
            self._start_backend()
            frame = _Frame()
            self._import_frame = frame
            self._activate(frame, restart=True)
        except _Unavailable as e:
            self._fail(None, str(e))
        except Exception as e:
            self._fail(e)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session) -> None:
        frame, self._import_frame = self._import_frame, None
        if frame is None or self._broken:
            return
        try:
            self._deactivate()
            keys = self._resolve(frame)
            # Modules imported before collection (a rootdir conftest.py and
            # what it imports) ran their top-level code unseen: that code,
            # their module and class bodies, counts as well.
            for module in list(sys.modules.values()):
                filename = getattr(module, "__file__", None)
                if not isinstance(filename, str) or not filename.endswith(".py"):
                    continue
                analysis = self._files.get(filename)
                if analysis is None and filename not in self._files:
                    analysis = self._files[filename] = self._analysis(filename)
                if analysis is not None:
                    keys.update(analysis.import_keys())
            # Test modules and conftest.py files are not every test's code:
            # a test depends on its own module through what it ran, and a
            # conftest.py is a watched file.
            tests = {os.path.normcase(os.path.abspath(str(getattr(i, "path", "") or i.fspath)))
                     for i in session.items}
            units = self._units
            self._import_keys = frozenset(
                k for k in keys
                if k in units and not self._is_test_path(units[k][PATH], tests)
            )
        except Exception as e:
            self._fail(e)

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item):
        if not self._broken:
            try:
                self._begin()
            except _Unavailable as e:
                self._fail(None, str(e))
            except Exception as e:
                self._fail(e)
        yield

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        # A fixture wider than a test runs once for many: what it runs is
        # remembered, and given to every test that uses it.
        if self._broken or not self._frames or fixturedef.scope == "function":
            yield
            return
        try:
            self._push()
        except Exception as e:
            self._fail(e)
            yield
            return
        yield
        if self._broken:
            return
        try:
            self._pop(fixturedef)
        except Exception as e:
            self._fail(e)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        if call.when != "teardown":
            return
        report = None
        try:
            report = outcome.get_result()
        except BaseException:
            pass
        if not self._broken and self._frames:
            try:
                keys = self._end(item)
                if report is not None:
                    self._deliver(item, report, keys)
            except Exception as e:
                self._fail(e)
        if self._warning is not None:
            self._hand_on_warning(report)

    def pytest_sessionfinish(self, session) -> None:
        self._stop()
        if self._warning is not None:
            self._hand_on_warning(None)

    # ---- one test -------------------------------------------------------------

    def _start_backend(self) -> None:
        if self._backend is None:
            _AUDIT_PROJECT[0] = self._project
            self._backend = (
                _Monitoring(self._is_project) if sys.version_info >= (3, 12) else _Settrace()
            )
            _install_audit_hook()

    def _is_test_path(self, rel: str, tests: set) -> bool:
        """Whether a rootdir-relative path is a collected test module or a conftest.py."""
        if rel.rsplit("/", 1)[-1] == "conftest.py":
            return True
        full = os.path.normcase(os.path.join(self._project.root, *rel.split("/")))
        return full in tests

    def _begin(self) -> None:
        self._start_backend()
        if self._import_frame is not None:  # a test run inside collection (pytester)
            self._deactivate()
            self._import_frame = None
        frame = _Frame()
        self._frames = [frame]
        self._incomplete = False
        self._activate(frame, restart=True)

    def _activate(self, frame: _Frame, restart: bool) -> None:
        self._backend.activate(frame.codes, restart)
        _AUDIT_TARGET[0] = frame.opens.append

    def _deactivate(self) -> None:
        _AUDIT_TARGET[0] = None
        if not self._backend.deactivate():
            # Someone else's trace function was there, or replaced ours.
            self._incomplete = True
            if not self._noted_foreign:
                self._noted_foreign = True
                self._warn(
                    "another tool traces this run with sys.settrace (coverage, a debugger?): "
                    "before Python 3.12, dependencies are not recorded for the tests it traces"
                )

    def _push(self) -> None:
        self._deactivate()
        frame = _Frame()
        self._frames.append(frame)
        # restart: code the test already ran fires again, for this fixture.
        self._activate(frame, restart=True)

    def _pop(self, fixturedef) -> None:
        frames = self._frames
        if len(frames) < 2:
            return
        self._deactivate()
        frame = frames.pop()
        keys = self._resolve(frame)
        self._fixture_keys.setdefault(fixturedef, set()).update(keys)
        frames[-1].keys.update(keys)
        self._activate(frames[-1], restart=False)

    def _end(self, item) -> Optional[Tuple[int, ...]]:
        self._deactivate()
        frames = self._frames
        self._frames = []
        keys: set = set()
        for frame in frames:  # more than one only after a fixture's setup was cut short
            keys |= self._resolve(frame)
        remembered = self._fixture_keys
        if remembered:
            defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", None) or {}
            for name in getattr(item, "fixturenames", ()):
                for fixturedef in defs.get(name, ()):
                    more = remembered.get(fixturedef)
                    if more:
                        keys |= more
        keys |= self._import_keys
        if self._incomplete or len(keys) > MAX_TEST_UNITS:
            return None
        return tuple(sorted(keys))

    def _resolve(self, frame: _Frame) -> set:
        """The keys of what a frame ran and read; parses files and hashes data as needed."""
        keys = set(frame.keys)
        files = self._files
        for code in list(frame.codes.values()):
            filename = code.co_filename
            try:
                analysis = files[filename]
            except KeyError:
                analysis = files[filename] = self._analysis(filename)
            if analysis is not None:
                keys.update(analysis.keys_for(code.co_firstlineno, code.co_name))
        for path, mode, flags in frame.opens:
            key = self._data_key(path, mode, flags)
            if key is not None:
                keys.add(key)
        return keys

    def _is_project(self, code) -> bool:
        """Whether a code object is the project's (from its file's path alone)."""
        filename = code.co_filename
        known = self._project_files.get(filename)
        if known is None:
            known = self._project_files[filename] = self._relative(filename) is not None
        return known

    def _relative(self, filename: str) -> Optional[str]:
        if not filename.endswith(".py"):
            return None  # "<string>", "<frozen ...>", generated code
        project = self._project
        path = project.absolute(filename)
        if path is None:
            return None
        return project.relative(path)

    def _analysis(self, filename: str) -> Optional[_Analysis]:
        rel = self._relative(filename)
        if rel is None:
            return None
        path = self._project.absolute(filename)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        analysis = _analyse(rel, data)
        units = self._units
        for unit in analysis.units:
            units.setdefault(unit[KEY], unit)
        return analysis

    def _data_key(self, path: str, mode: Any, flags: Any) -> Optional[int]:
        if mode is not None:
            if _WRITE_MODE.intersection(mode):
                return None
        elif isinstance(flags, int) and flags & _WRITE_FLAGS:
            return None
        if path.endswith(_SOURCE_SUFFIXES):
            return None
        path = os.path.normpath(path)
        try:
            st = os.stat(path)
        except OSError:
            return None  # gone (or never there)
        if not stat.S_ISREG(st.st_mode):
            return None
        signature = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
        known = self._data.get(path)
        if known is not None and known[0] == signature:
            return known[1]
        key = None
        rel = self._project.relative(path)
        if rel is not None:
            checksum = _file_checksum(path)
            if checksum is not None:
                unit = make_unit(FILE, rel, "", 0, 0, checksum)
                self._units.setdefault(unit[KEY], unit)
                key = unit[KEY]
        self._data[path] = (signature, key)
        return key

    def _deliver(self, item, report, keys: Optional[Tuple[int, ...]]) -> None:
        handoff = self._handoff
        if handoff is not None:
            if keys is not None:
                handoff.pending[item.nodeid] = keys
            return
        if keys is None:
            return
        # xdist carries report attributes to the controller: ints (however
        # large) and lists survive its serialization.
        report.mcp_deps = keys
        sent = self._sent
        units = self._units
        new = [list(units[k]) for k in keys if k not in sent]
        if new:
            sent.update(keys)
            report.mcp_units = new

    # ---- failure --------------------------------------------------------------

    def _warn(self, text: str) -> None:
        if self._warning is None:
            self._warning = f"pytest-mcp: warning: {text}"

    def _hand_on_warning(self, report) -> None:
        text, self._warning = self._warning, None
        handoff = self._handoff
        if handoff is not None:
            if handoff.warning is None:
                handoff.warning = text
        elif report is not None:
            report.mcp_deps_warning = text
        else:
            self._warning = text  # no report left to carry it on this worker

    def _fail(self, error: Optional[BaseException], reason: Optional[str] = None) -> None:
        """Turns recording off for the rest of the run; one warning says why."""
        self._broken = True
        if reason is None:
            reason = f"{type(error).__name__}: {error}"
            frame_info = error.__traceback__
            while frame_info is not None and frame_info.tb_next is not None:
                frame_info = frame_info.tb_next
            if frame_info is not None:
                reason += f" at {os.path.basename(frame_info.tb_frame.f_code.co_filename)}:{frame_info.tb_lineno}"
        self._frames = []
        self._stop()
        if self._handoff is not None:
            self._handoff.pending.clear()
        self._warning = None
        self._warn(f"recording dependencies failed ({reason}); they are not recorded for the rest of the run")

    def _stop(self) -> None:
        _AUDIT_TARGET[0] = None
        backend, self._backend = self._backend, None
        if backend is not None:
            try:
                backend.stop()
            except Exception:
                pass
