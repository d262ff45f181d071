"""The code state of a run: which code it tested, as one comparable string.

``<commit>`` when the checkout has no changes, else ``<commit>+<digest>``:
the digest (sha256, first 16 hex digits) covers every change of the working
tree against the commit, with each changed path's current content (its git
blob id) or the fact that it is deleted. The recorder calls two runs "on the
same code" only when their code states are equal and not empty, so:

* the digest depends on the tree, not on how it got there: entries are
  sorted, and a change staged or not staged gives the same entry (the
  content of a path is its blob id either way);
* what tests and tools write into an unignored tree (``__pycache__``,
  ``.pytest_cache``, ...; see ``_GENERATED_DIRS``) is left out of the
  untracked files, or a second run of unchanged code would never match the
  first one;
* anything uncertain gives ``""`` (unknown), never a guess: git missing or
  failing, no commit yet, not a checkout, or the work over its bounds
  (``BUDGET`` seconds, ``MAX_CHANGED_PATHS`` paths, ``MAX_HASHED_BYTES``
  bytes to hash). An unknown code state is comparable to no other run.

Everything comes from git itself, without reading the tree twice: ``git
status --porcelain=v2 -z`` names the changed paths (respecting .gitignore)
and already carries the blob id of each path whose worktree equals the
index; ``git hash-object`` hashes only the rest. Runs on the sender thread.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import time
from typing import Dict, List, NamedTuple, Optional, Tuple

#: Seconds the whole computation may take, every git call included.
BUDGET = 2.0
#: More changed paths than this (after the exclusions): unknown.
MAX_CHANGED_PATHS = 5000
#: More bytes of changed files to hash than this: unknown.
MAX_HASHED_BYTES = 64 * 1024 * 1024

# Untracked paths with one of these components are what tests and tools
# generate, not code: caches, virtual environments, installed packages.
_GENERATED_DIRS = frozenset(
    {
        b"__pycache__",
        b".pytest_cache",
        b".mypy_cache",
        b".ruff_cache",
        b".hypothesis",
        b".tox",
        b".nox",
        b".venv",
        b"venv",
        b"node_modules",
    }
)
_GENERATED_SUFFIXES = (b".egg-info", b".pyc", b".pyo")

_DELETED = b"deleted"
_SYMLINK = b"120000"
_ABSENT = b"000000"


class Change(NamedTuple):
    """One entry of ``git status --porcelain=v2 -z``, reduced to what the digest needs."""

    #: ``1`` ordinary, ``2`` renamed or copied, ``u`` unmerged, ``?`` untracked.
    kind: str
    #: Path relative to the top of the checkout, as git wrote it (bytes).
    path: bytes
    #: Index and worktree status letters (``XY``); empty for untracked.
    xy: str = ""
    #: Submodule state (``N...`` for a plain file, ``S<c><m><u>`` for a submodule).
    sub: str = "N..."
    #: Octal mode in the worktree, ``000000`` when the path is gone.
    mode: bytes = b""
    #: Blob id in the index (for ``1`` and ``2``).
    index_id: bytes = b""
    #: For ``2``: the path it was renamed (``R``) or copied (``C``) from.
    original: Optional[bytes] = None


class StatusError(ValueError):
    """Output that is not the porcelain v2 format this module reads."""


def parse_status(data: bytes) -> Tuple[Optional[bytes], List[Change]]:
    """The commit (``# branch.oid``; None without a commit) and the changes of
    ``git status --porcelain=v2 -z --branch`` output."""
    commit: Optional[bytes] = None
    changes: List[Change] = []
    fields = iter(data.split(b"\0"))
    for record in fields:
        if not record:
            continue  # the terminator of the last record
        kind = record[:2]
        if kind == b"# ":
            if record.startswith(b"# branch.oid "):
                oid = record[len(b"# branch.oid ") :]
                commit = None if oid == b"(initial)" else oid
        elif kind == b"1 ":
            # 1 XY sub mH mI mW hH hI path
            parts = record.split(b" ", 8)
            _check(parts, 9, record)
            changes.append(
                Change("1", parts[8], parts[1].decode("ascii"), parts[2].decode("ascii"),
                       parts[5], parts[7])
            )
        elif kind == b"2 ":
            # 2 XY sub mH mI mW hH hI Xscore path, then the original path as a field of its own
            parts = record.split(b" ", 9)
            _check(parts, 10, record)
            original = next(fields, b"")
            if not original:
                raise StatusError("a rename record without its original path")
            score = parts[8][:1].decode("ascii")
            changes.append(
                Change("2", parts[9], parts[1].decode("ascii"), parts[2].decode("ascii"),
                       parts[5], parts[7], original if score == "R" else None)
            )
        elif kind == b"u ":
            # u XY sub m1 m2 m3 mW h1 h2 h3 path
            parts = record.split(b" ", 10)
            _check(parts, 11, record)
            changes.append(
                Change("u", parts[10], parts[1].decode("ascii"), parts[2].decode("ascii"),
                       parts[6])
            )
        elif kind == b"? ":
            changes.append(Change("?", record[2:]))
        elif kind == b"! ":
            continue  # ignored: not code of the run (only listed with --ignored)
        else:
            raise StatusError(f"unknown record {record[:20]!r}")
    return commit, changes


def _check(parts: List[bytes], count: int, record: bytes) -> None:
    if len(parts) != count or not parts[-1]:
        raise StatusError(f"malformed record {record[:40]!r}")


def generated(path: bytes) -> bool:
    """Whether an untracked path is what tests and tools write (see ``_GENERATED_DIRS``)."""
    name = path.rstrip(b"/")
    for component in name.split(b"/"):
        if component in _GENERATED_DIRS or component.endswith(_GENERATED_SUFFIXES):
            return True
    last = name.rsplit(b"/", 1)[-1]
    return last == b".coverage" or last.startswith(b".coverage.")


def code_state(root: str) -> str:
    """The code state of the checkout holding ``root``; ``""`` when unknown."""
    try:
        return _compute(root, time.monotonic() + BUDGET)
    except (_OverBudget, StatusError, OSError, UnicodeError, ValueError):
        return ""


class _OverBudget(Exception):
    """Git failed or the work went past one of the bounds: the state is unknown."""


def _git(cwd: str, args: List[str], deadline: float, stdin: Optional[bytes] = None) -> bytes:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _OverBudget("no time left")
    env = dict(os.environ)
    # A status must not take the index lock a concurrent git command may need.
    env["GIT_OPTIONAL_LOCKS"] = "0"
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=left,
            env=env,
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise _OverBudget(str(e)) from None
    if done.returncode != 0:
        raise _OverBudget(f"git {args[0]} exited with {done.returncode}")
    return done.stdout


def _compute(root: str, deadline: float) -> str:
    top_line = _git(root, ["rev-parse", "--show-toplevel"], deadline)
    # Code outside pytest's rootdir is still code: the whole checkout counts.
    top = os.fsdecode(top_line[:-1] if top_line.endswith(b"\n") else top_line)
    if not top:
        return ""
    status = _git(
        top, ["status", "--porcelain=v2", "-z", "--branch", "--untracked-files=all"], deadline
    )
    commit, changes = parse_status(status)
    if commit is None:
        return ""  # no commit yet: nothing to compare with
    entries = _entries(top, commit, changes, deadline)
    if not entries:
        return commit.decode("ascii")
    digest = hashlib.sha256()
    for path in sorted(entries):
        # NUL cannot be part of a path or a token: the encoding is unambiguous.
        digest.update(path + b"\0" + entries[path] + b"\0")
    return f"{commit.decode('ascii')}+{digest.hexdigest()[:16]}"


def _entries(top: str, commit: bytes, changes: List[Change], deadline: float) -> Dict[bytes, bytes]:
    """path -> token (``<mode> <blob id>``, ``deleted``, or a submodule's state)."""
    entries: Dict[bytes, bytes] = {}
    to_hash: List[Tuple[bytes, bytes]] = []  # (path, mode) whose content git must hash
    hashed_bytes = 0
    # The object format (sha1 or sha256) shows in the length of an object id.
    algorithm = "sha1" if len(commit) == 40 else "sha256"
    for change in changes:
        _check_bounds(len(entries) + len(to_hash), hashed_bytes)
        path = change.path
        if change.kind == "?":
            if generated(path):
                continue
            if path.endswith(b"/"):
                # An untracked nested repository: its content is its own.
                entries[path] = b"untracked repository"
                continue
            info = os.lstat(os.path.join(top, os.fsdecode(path)))
            if stat.S_ISLNK(info.st_mode):
                entries[path] = _symlink_token(top, path, algorithm)
                continue
            mode = b"100755" if info.st_mode & stat.S_IXUSR else b"100644"
            hashed_bytes += info.st_size
            to_hash.append((path, mode))
            continue
        if change.original is not None and change.original not in entries:
            # Renamed away; an untracked file or a rename's target at that
            # path (listed before or after) is what the path holds instead.
            entries[change.original] = _DELETED
        if change.sub.startswith("S"):
            # A submodule: its recorded commit and git's summary of its state,
            # without looking into it.
            entries[path] = b"submodule " + change.index_id + b" " + change.sub.encode("ascii")
        elif change.mode == _ABSENT or (change.kind != "u" and change.xy[1:] == "D"):
            entries[path] = _DELETED
        elif change.kind != "u" and change.xy[1:] == ".":
            # The worktree equals the index: git already knows the blob.
            entries[path] = change.mode + b" " + change.index_id
        elif change.mode == _SYMLINK:
            entries[path] = _symlink_token(top, path, algorithm)
        else:
            hashed_bytes += os.lstat(os.path.join(top, os.fsdecode(path))).st_size
            to_hash.append((path, change.mode))
    _check_bounds(len(entries) + len(to_hash), hashed_bytes)
    if to_hash:
        # --stdin-paths applies the path's filters (.gitattributes, line
        # endings), so a file hashes to the blob id it would have in the index.
        listing = b"".join(_quote(path) + b"\n" for path, _ in to_hash)
        ids = _git(top, ["hash-object", "--stdin-paths"], deadline, stdin=listing).split()
        if len(ids) != len(to_hash):
            raise _OverBudget("git hash-object gave a wrong number of ids")
        for (path, mode), oid in zip(to_hash, ids):
            entries[path] = mode + b" " + oid
    return entries


def _check_bounds(paths: int, hashed_bytes: int) -> None:
    if paths > MAX_CHANGED_PATHS:
        raise _OverBudget("too many changed paths")
    if hashed_bytes > MAX_HASHED_BYTES:
        raise _OverBudget("too many bytes to hash")


def _symlink_token(top: str, path: bytes, algorithm: str) -> bytes:
    """A symlink's blob id, computed as git does (its content is the link's
    target; ``git hash-object`` would hash the file it points to)."""
    target = os.fsencode(os.readlink(os.path.join(top, os.fsdecode(path))))
    blob = hashlib.new(algorithm, b"blob %d\0" % len(target) + target).hexdigest()
    return _SYMLINK + b" " + blob.encode("ascii")


_ESCAPES = {ord("\\"): b"\\\\", ord('"'): b'\\"', ord("\n"): b"\\n", ord("\t"): b"\\t"}


def _quote(path: bytes) -> bytes:
    """A path as one line of ``--stdin-paths``: C-quoted (which git unquotes)
    when it holds a newline, a quote or another control character."""
    if not any(b < 0x20 or b in (0x22, 0x5C, 0x7F) for b in path):
        return path
    out = bytearray(b'"')
    for b in path:
        escape = _ESCAPES.get(b)
        if escape is not None:
            out += escape
        elif b < 0x20 or b == 0x7F:
            out += b"\\%03o" % b
        else:
            out.append(b)
    out += b'"'
    return bytes(out)
