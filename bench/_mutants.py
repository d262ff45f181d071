"""Single-point mutants of a project's library source, for bench/affected.py.

A mutant is one edit of the exact source text at one node's position: an operator, a
comparison, a constant, or a statement. The file is never regenerated from the tree
(``ast.unparse``), so everything but the edited span stays byte for byte what it was. The
candidates of a project are enumerated in a fixed order (files sorted, nodes in source order)
and sampled with ``random.Random(f"{seed}:{project}")``, the kinds taking turns, so a seed names the same mutants on
every machine. A mutant's id hashes its file, span and replacement: it does not depend on the
seed, so results cached under one seed serve another.

Kinds:
    operator    + <-> -, * <-> /, // -> /, % -> //, and their augmented forms (+= ...)
    boolean     and <-> or
    comparison  < <-> <=, > <-> >=, == <-> !=, is <-> is not, in <-> not in
    constant    int n -> n + 1, True <-> False, a non-empty string gets a trailing '~'
    statement   a simple statement in a function body -> pass; return X -> return None

Skipped: docstrings, f-string parts, annotations, dunder assignments (__all__,
__version__), and anything under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import bisect
import hashlib
import io
import json
import random
import tokenize
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

KINDS = ("operator", "boolean", "comparison", "constant", "statement")

BINOPS = {ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "/"), ast.Div: ("/", "*"),
          ast.FloorDiv: ("//", "/"), ast.Mod: ("%", "//")}
COMPARES = {ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="),
            ast.GtE: (">=", ">"), ast.Eq: ("==", "!="), ast.NotEq: ("!=", "=="),
            ast.Is: ("is", "is not"), ast.IsNot: ("is not", "is"), ast.In: ("in", "not in"),
            ast.NotIn: ("not in", "in")}
SIMPLE_STATEMENTS = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.Raise, ast.Assert,
                     ast.Delete)
SKIPPED_FIELDS = {"annotation", "returns", "type_comment", "type_params"}


@dataclass(frozen=True)
class Mutant:
    """One edit: replace text[start:end] (character offsets) of `file` with `replacement`."""

    id: str
    file: str  # relative to the project's tree
    line: int
    kind: str
    scope: str  # function, class or module: where the edited code runs
    start: int
    end: int
    original: str
    replacement: str

    @property
    def description(self) -> str:
        if self.kind == "statement" and self.replacement == "None":
            return f"return {_short(self.original)} -> return `None`"
        return f"{_short(self.original)} -> {_short(self.replacement)}"

    def apply(self, text: str) -> str:
        if text[self.start:self.end] != self.original:
            raise ValueError(f"mutant {self.id}: {self.file} changed since it was enumerated")
        return text[:self.start] + self.replacement + text[self.end:]

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def _short(text: str, limit: int = 40) -> str:
    one = " ".join(text.split())
    return "`" + (one if len(one) <= limit else one[:limit - 3] + "...") + "`"


class _Source:
    """A file's text with conversions from ast's (line, UTF-8 byte column) to text offsets."""

    def __init__(self, text: str) -> None:
        self.text = text
        # Lines as ast and tokenize count them: ended by "\n" only (str.splitlines would also
        # split on form feeds and other characters that do not end a line of Python).
        self.lines = [line + "\n" for line in text.split("\n")]
        self.lines[-1] = self.lines[-1][:-1]
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))
        self.tokens = [t for t in tokenize.generate_tokens(io.StringIO(text).readline)
                       if t.type in (tokenize.OP, tokenize.NAME)]
        self.token_offsets = [self.offset_chars(*t.start) for t in self.tokens]

    def offset_chars(self, line: int, col: int) -> int:
        return self.starts[line - 1] + col

    def offset(self, line: int, byte_col: int) -> int:
        """Text offset of ast's (lineno, col_offset), whose column counts UTF-8 bytes."""
        raw = self.lines[line - 1].encode("utf-8")[:byte_col]
        return self.starts[line - 1] + len(raw.decode("utf-8", errors="replace"))

    def span(self, node: ast.AST) -> Tuple[int, int]:
        return (self.offset(node.lineno, node.col_offset),
                self.offset(node.end_lineno, node.end_col_offset))

    def gap_tokens(self, start: int, end: int) -> List[Tuple[int, int, str]]:
        """OP and NAME tokens wholly inside text[start:end], parentheses left out."""
        found = []
        for i in range(bisect.bisect_left(self.token_offsets, start), len(self.tokens)):
            offset, tok = self.token_offsets[i], self.tokens[i]
            if offset >= end:
                break
            if tok.string in "()":
                continue
            found.append((offset, offset + len(tok.string), tok.string))
        return found


def read(path: Path) -> str:
    """A file's text with its line endings as they are (no newline translation)."""
    return path.read_bytes().decode("utf-8")


def write(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8"))


def _is_docstring(node: ast.AST, parent: Optional[ast.AST]) -> bool:
    body = getattr(parent, "body", None)
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str) and isinstance(body, list)
            and bool(body) and body[0] is node)


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _assigns_dunder(node: ast.AST) -> bool:
    targets = getattr(node, "targets", None) or [getattr(node, "target", None)]
    return any(isinstance(t, ast.Name) and t.id.startswith("__") and t.id.endswith("__")
               for t in targets)


# A candidate before it gets an id: (line, kind, scope, start, end, replacement).
_Candidate = Tuple[int, str, str, int, int, str]


def _candidates(src: _Source, tree: ast.AST) -> Iterator[_Candidate]:
    def walk(node: ast.AST, parent: Optional[ast.AST], scope: str) -> Iterator[_Candidate]:
        if _is_type_checking(node) or _is_docstring(node, parent) or isinstance(node, ast.JoinedStr):
            return
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and _assigns_dunder(node):
            return
        yield from point(node, scope)
        inner = scope
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inner = "function"
        elif isinstance(node, ast.ClassDef):
            inner = "class"
        for name, value in ast.iter_fields(node):
            if name in SKIPPED_FIELDS:
                continue
            children = value if isinstance(value, list) else [value]
            for child in children:
                if isinstance(child, ast.AST):
                    # Decorators and defaults run where the def is, not in the function.
                    child_scope = scope if name in ("decorator_list", "args", "bases",
                                                    "keywords") else inner
                    yield from walk(child, node, child_scope)

    def token_between(a: int, b: int, wanted: str) -> Optional[Tuple[int, int]]:
        for start, end, text in src.gap_tokens(a, b):
            if text == wanted:
                return start, end
        return None

    def point(node: ast.AST, scope: str) -> Iterator[_Candidate]:
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.BinOp) and type(node.op) in BINOPS:
            old, new = BINOPS[type(node.op)]
            if isinstance(node.op, ast.Mod) and isinstance(node.left, (ast.Constant, ast.JoinedStr)):
                return  # string formatting, not arithmetic
            found = token_between(src.span(node.left)[1], src.span(node.right)[0], old)
            if found:
                yield (line, "operator", scope, found[0], found[1], new)
        elif isinstance(node, ast.AugAssign) and type(node.op) in BINOPS:
            old, new = BINOPS[type(node.op)]
            found = token_between(src.span(node.target)[1], src.span(node.value)[0], old + "=")
            if found:
                yield (line, "operator", scope, found[0], found[1], new + "=")
        elif isinstance(node, ast.BoolOp):
            old, new = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
            for left, right in zip(node.values, node.values[1:]):
                found = token_between(src.span(left)[1], src.span(right)[0], old)
                if found:
                    yield (left.end_lineno, "boolean", scope, found[0], found[1], new)
        elif isinstance(node, ast.Compare):
            operands = [node.left] + node.comparators
            for op, left, right in zip(node.ops, operands, operands[1:]):
                old, new = COMPARES[type(op)]
                tokens = src.gap_tokens(src.span(left)[1], src.span(right)[0])
                if tokens and " ".join(t[2] for t in tokens) == old:
                    yield (left.end_lineno, "comparison", scope, tokens[0][0], tokens[-1][1], new)
        elif isinstance(node, ast.Constant):
            start, end = src.span(node)
            value = node.value
            if isinstance(value, bool):
                yield (line, "constant", scope, start, end, str(not value))
            elif isinstance(value, int):
                yield (line, "constant", scope, start, end, str(value + 1))
            elif isinstance(value, str) and value:
                yield (line, "constant", scope, start, end, repr(value + "~"))
        if scope == "function" and isinstance(node, ast.Return) and node.value is not None:
            if not (isinstance(node.value, ast.Constant) and node.value.value is None):
                start, end = src.span(node.value)
                yield (line, "statement", scope, start, end, "None")
        elif scope == "function" and isinstance(node, SIMPLE_STATEMENTS):
            if isinstance(node, ast.AnnAssign) and node.value is None:
                return
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                return  # a bare constant (..., a string) does nothing to replace
            start, end = src.span(node)
            yield (line, "statement", scope, start, end, "pass")

    yield from walk(tree, None, "module")


def source_files(tree: Path, sources: Sequence[str], exclude: Sequence[str]) -> List[Path]:
    """The library's .py files under `sources`, minus `exclude` prefixes, sorted."""
    files = []
    for root in sources:
        for path in sorted((tree / root).rglob("*.py")):
            rel = path.relative_to(tree).as_posix()
            if any(rel == e or rel.startswith(e.rstrip("/") + "/") for e in exclude):
                continue
            if "/tests/" in f"/{rel}" or path.name.startswith(("test_", "conftest")):
                continue
            files.append(path)
    return sorted(set(files))


def enumerate_mutants(tree: Path, sources: Sequence[str], exclude: Sequence[str]) -> List[Mutant]:
    """Every candidate mutant of the library, in a fixed order."""
    mutants: List[Mutant] = []
    for path in source_files(tree, sources, exclude):
        text = read(path)
        try:
            module = ast.parse(text)
            src = _Source(text)
        except (SyntaxError, tokenize.TokenError):
            continue
        rel = path.relative_to(tree).as_posix()
        seen = set()
        for line, kind, scope, start, end, replacement in _candidates(src, module):
            key = (start, end, replacement)
            if key in seen:
                continue
            seen.add(key)
            digest = hashlib.sha1(f"{rel}:{start}:{end}:{replacement}".encode()).hexdigest()[:10]
            mutants.append(Mutant(id=digest, file=rel, line=line, kind=kind, scope=scope,
                                  start=start, end=end, original=text[start:end],
                                  replacement=replacement))
    return mutants


def sample(mutants: List[Mutant], tree: Path, count: int, seed: int, project: str) -> List[Mutant]:
    """`count` mutants picked with the seed, each checked to compile and to change the AST.

    The kinds take turns (operator, boolean, comparison, constant, statement, operator, ...),
    each drawing from its own shuffled list, so a library with few operators still gets
    operator mutants; a kind that runs out leaves its turns to the others.
    """
    rng = random.Random(f"{seed}:{project}")
    by_kind: Dict[str, List[Mutant]] = {kind: [] for kind in KINDS}
    for mutant in mutants:
        by_kind[mutant.kind].append(mutant)
    for kind in KINDS:
        rng.shuffle(by_kind[kind])
    order: List[Mutant] = []
    for turn in range(max(len(v) for v in by_kind.values()) if mutants else 0):
        order.extend(by_kind[kind][turn] for kind in KINDS if turn < len(by_kind[kind]))
    picked: List[Mutant] = []
    texts: Dict[str, str] = {}
    dumps: Dict[str, str] = {}
    for mutant in order:
        if len(picked) >= count:
            break
        if mutant.file not in texts:
            texts[mutant.file] = read(tree / mutant.file)
            dumps[mutant.file] = ast.dump(ast.parse(texts[mutant.file]))
        try:
            changed = ast.parse(mutant.apply(texts[mutant.file]))
        except (SyntaxError, ValueError):
            continue
        if ast.dump(changed) == dumps[mutant.file]:
            continue  # e.g. 1_0 -> 11 spelled differently but equal: not a mutant
        picked.append(mutant)
    return picked


class Applied:
    """Applies a mutant to a tree for the length of a `with` block, and always puts it back.

    Before the edit, the original text is written to a journal file beside the tree; a run
    killed in the middle (SIGKILL, power) leaves the journal, and `restore_leftover` puts the
    original back at the next start.
    """

    def __init__(self, tree: Path, mutant: Mutant, journal: Path) -> None:
        self.path = tree / mutant.file
        self.mutant = mutant
        self.journal = journal
        self.original: Optional[str] = None

    def __enter__(self) -> "Applied":
        self.original = read(self.path)
        mutated = self.mutant.apply(self.original)
        self.journal.write_text(json.dumps({"path": str(self.path), "text": self.original}))
        write(self.path, mutated)
        return self

    def __exit__(self, *exc) -> None:
        if self.original is not None:
            write(self.path, self.original)
        self.journal.unlink(missing_ok=True)


def restore_leftover(journal: Path) -> Optional[str]:
    """Puts back a file a killed run left mutated; returns its path, or None."""
    if not journal.exists():
        return None
    data = json.loads(journal.read_text())
    write(Path(data["path"]), data["text"])
    journal.unlink()
    return data["path"]
