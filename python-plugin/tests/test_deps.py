"""Per-test dependencies (--mcp-deps), as a user finds them in the spool file
or on the wire: which code units and files each test depended on.

The runs record to an address nothing listens on, so everything lands in the
spool file, which the test reads. These tests run on Python 3.11 (sys.settrace)
and on 3.12 or newer (sys.monitoring); scripts/test runs them on both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent import futures
from pathlib import Path
from typing import Dict, List, Optional

import grpc
import pytest

from conftest import INNER_TIMEOUT, free_port, spool_path_of, warning_lines
from pytest_mcp import _deps
from pytest_mcp._proto import recorder_pb2 as pb
from pytest_mcp._proto import recorder_pb2_grpc

HEX16 = set("0123456789abcdef")


class Run:
    """One inner run and what its spool file says."""

    def __init__(self, result, path: Optional[Path]) -> None:
        self.result = result
        self.ret = result.ret
        self.lines: List[dict] = []
        if path is not None:
            self.lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        self.units: Dict[str, dict] = {}
        for line in self.lines:
            if line["type"] == "units":
                for unit in line["units"]:
                    self.units[unit["key"]] = unit
        self.outcomes = [line for line in self.lines if line["type"] == "outcome"]
        starts = [line for line in self.lines if line["type"] == "start"]
        self.environment = starts[0]["environment"] if starts else {}

    def outcome(self, name: str) -> dict:
        (found,) = [o for o in self.outcomes if o["nodeid"].endswith("::" + name) and not o.get("subtest")]
        return found

    def deps(self, name: str) -> set:
        """(kind, path, name) of each unit the test depended on."""
        return {(u["kind"], u["path"], u["name"]) for u in self.dep_units(name)}

    def dep_units(self, name: str) -> List[dict]:
        return [self.units[key] for key in self.outcome(name)["deps"]]

    def checksums(self) -> Dict[tuple, str]:
        return {(u["kind"], u["path"], u["name"]): u["checksum"] for u in self.units.values()}

    def tests_depending_on(self, kind: str, path: str, name: str = "") -> set:
        return {
            o["nodeid"].split("::", 1)[1]
            for o in self.outcomes
            if o.get("deps") is not None
            and any(
                (self.units[k]["kind"], self.units[k]["path"], self.units[k]["name"]) == (kind, path, name)
                for k in o["deps"]
            )
        }


@pytest.fixture
def run(pytester, tmp_path_factory):
    """Runs pytest in a subprocess with recording (and by default --mcp-deps) on,
    at an address nothing listens on, and reads the spool file."""
    # rootdir: the test's directory (pytester writes the ini as tox.ini).
    pytester.makeini("[pytest]\n")

    def run(*args: str, deps: bool = True, expect_spool: bool = True) -> Run:
        spool = tmp_path_factory.mktemp("spool")
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider",
            "--mcp",
            *(["--mcp-deps"] if deps else []),
            f"--mcp-address=127.0.0.1:{free_port()}",
            f"--mcp-spool={spool}",
            "--mcp-timeout=0.5",
            *args,
            timeout=INNER_TIMEOUT,
        )
        path = spool_path_of(result)
        if expect_spool:
            assert path is not None, result.outlines
        return Run(result, path)

    return run


PARSER = textwrap.dedent(
    """\
    import os

    LIMIT = 3


    def helper(x):
        return x + 1


    def unused():
        return 0


    class Parser:
        kind = "words"

        @staticmethod
        def split(text):
            return text.split()

        class Inner:
            def deep(self):
                return "deep"
    """
)

TESTS_OF_PARSER = textwrap.dedent(
    """\
    from pkg import parser


    def test_helper():
        assert parser.helper(1) == 2


    def test_split():
        assert parser.Parser.split("a b") == ["a", "b"]


    def test_deep():
        assert parser.Parser.Inner().deep() == "deep"


    def test_nothing_of_the_package():
        assert 1 + 1 == 2
    """
)


def make_package(pytester) -> None:
    pytester.mkpydir("pkg")
    (pytester.path / "pkg" / "parser.py").write_text(PARSER)
    pytester.makepyfile(test_parser=TESTS_OF_PARSER)


def test_a_helper_is_a_dependency_of_exactly_the_tests_that_ran_it_with_its_file_and_classes(run, pytester):
    make_package(pytester)
    r = run()
    assert r.ret == 0
    assert r.tests_depending_on("function", "pkg/parser.py", "helper") == {"test_helper"}
    (helper,) = [u for u in r.dep_units("test_helper") if u["name"] == "helper"]
    assert (helper["kind"], helper["line_start"], helper["line_end"]) == ("function", 6, 7)
    assert set(helper) == {"key", "code", "kind", "path", "name", "line_start", "line_end", "checksum"}
    assert len(helper["key"]) == len(helper["code"]) == 16 and set(helper["key"]) <= HEX16
    assert len(helper["checksum"]) == 32 and set(helper["checksum"]) <= HEX16

    # Module-level code ran at import, before any test: every test that ran
    # code of the file depends on it; a method brings its classes. What
    # collection ran (the package's module and class bodies, imported by the
    # test module) is every test's: a test can read what it built without
    # running any of its functions. The test module itself is not.
    module = ("module", "pkg/parser.py", "")
    imported = {
        ("module", "pkg/__init__.py", ""),
        module,
        ("class", "pkg/parser.py", "Parser"),
        ("class", "pkg/parser.py", "Parser.Inner"),
    }
    assert r.deps("test_helper") == imported | {
        ("function", "pkg/parser.py", "helper"),
        ("function", "test_parser.py", "test_helper"),
        ("module", "test_parser.py", ""),
    }
    assert r.deps("test_split") == imported | {
        ("function", "pkg/parser.py", "Parser.split"),
        ("function", "test_parser.py", "test_split"),
        ("module", "test_parser.py", ""),
    }
    assert {
        ("function", "pkg/parser.py", "Parser.Inner.deep"),
        ("class", "pkg/parser.py", "Parser.Inner"),
        ("class", "pkg/parser.py", "Parser"),
        module,
    } <= r.deps("test_deep")
    assert r.deps("test_nothing_of_the_package") == imported | {
        ("function", "test_parser.py", "test_nothing_of_the_package"),
        ("module", "test_parser.py", ""),
    }
    assert r.tests_depending_on("function", "pkg/parser.py", "unused") == set()
    spans = {(u["kind"], u["name"]): (u["line_start"], u["line_end"])
             for u in r.units.values() if u["path"] == "pkg/parser.py"}
    assert spans[("module", "")] == (1, PARSER.count("\n"))
    assert spans[("class", "Parser")] == (14, 23)
    # A decorated def starts at its first decorator.
    assert spans[("function", "Parser.split")] == (17, 19)


def test_a_comment_only_edit_keeps_every_checksum_and_a_body_edit_changes_only_that_function(run, pytester):
    make_package(pytester)
    parser_py = pytester.path / "pkg" / "parser.py"
    first = run().checksums()

    # Comments, blank lines and a shift of every line: the same code.
    reformatted = "# a new first line\n\n" + PARSER.replace("return x + 1", "return x + 1  # add one")
    reformatted = reformatted.replace("class Parser:", "class Parser:  # words\n")
    parser_py.write_text(reformatted)
    second = run().checksums()
    assert second == first

    # The body of one function: only its checksum changes.
    parser_py.write_text(PARSER.replace("return x + 1", "return x + 2"))
    pytester.makepyfile(test_parser=TESTS_OF_PARSER.replace("== 2\n", "== 3\n", 1))
    third = run().checksums()
    changed = {ref for ref in first if third.get(ref) != first[ref]}
    assert changed == {("function", "pkg/parser.py", "helper"), ("function", "test_parser.py", "test_helper")}


def test_a_data_file_read_by_one_test_is_a_file_unit_of_that_test_only(run, pytester):
    (pytester.path / "data").mkdir()
    (pytester.path / "data" / "table.csv").write_text("a,b\n1,2\n")
    (pytester.path / "data" / "other.txt").write_text("written, never read\n")
    pytester.makepyfile(
        test_files="""
        import os
        from pathlib import Path

        HERE = Path(__file__).parent

        def test_reads():
            assert (HERE / "data" / "table.csv").read_text().startswith("a,b")

        def test_reads_relative_after_chdir(monkeypatch):
            monkeypatch.chdir(HERE / "data")
            with open("table.csv", "rb") as f:
                assert f.read(3) == b"a,b"

        def test_writes_only(tmp_path):
            (HERE / "data" / "other.txt").write_text("changed")
            (tmp_path / "x.txt").write_text("x")
            assert (tmp_path / "x.txt").read_text() == "x"

        def test_reads_nothing():
            pass
        """
    )
    r = run()
    assert r.ret == 0
    csv = ("file", "data/table.csv", "")
    assert r.tests_depending_on(*csv) == {"test_reads", "test_reads_relative_after_chdir"}
    (unit,) = [u for u in r.dep_units("test_reads") if u["kind"] == "file"]
    assert (unit["line_start"], unit["line_end"]) == (0, 0)
    import hashlib

    assert unit["checksum"] == hashlib.blake2b(b"a,b\n1,2\n", digest_size=16).hexdigest()
    # Written files, files outside rootdir and source files are not data read.
    assert not [u for u in r.dep_units("test_writes_only") if u["kind"] == "file"]
    assert not [u for u in r.dep_units("test_reads_nothing") if u["kind"] == "file"]


SHARED_CONFTEST = textwrap.dedent(
    """\
    import pytest

    from pkg import loader


    @pytest.fixture(scope="session")
    def catalogue():
        return loader.load()
    """
)

LOADER = textwrap.dedent(
    """\
    from pathlib import Path


    def load():
        return Path(__file__).with_name("catalogue.txt").read_text().split()
    """
)


def test_a_session_fixtures_setup_is_a_dependency_of_every_test_using_it_in_any_file(run, pytester):
    pytester.mkpydir("pkg")
    (pytester.path / "pkg" / "loader.py").write_text(LOADER)
    (pytester.path / "pkg" / "catalogue.txt").write_text("one two\n")
    pytester.makeconftest(SHARED_CONFTEST)
    pytester.makepyfile(
        test_first="def test_first(catalogue):\n    assert catalogue == ['one', 'two']\n",
        test_second="def test_second(catalogue):\n    assert len(catalogue) == 2\n",
        test_third="def test_third():\n    pass\n",
    )
    r = run("-p", "no:randomly")
    assert r.ret == 0
    for unit in (("function", "pkg/loader.py", "load"),
                 ("function", "conftest.py", "catalogue"), ("file", "pkg/catalogue.txt", "")):
        assert r.tests_depending_on(*unit) == {"test_first", "test_second"}, unit
    # The conftest.py imported the loader before any test: its top-level
    # code is every test's.
    assert r.tests_depending_on("module", "pkg/loader.py", "") == {
        "test_first", "test_second", "test_third"}


def deps_by_test(r: Run) -> Dict[str, set]:
    return {o["nodeid"]: {(r.units[k]["kind"], r.units[k]["path"], r.units[k]["name"],
                           r.units[k]["line_start"], r.units[k]["checksum"]) for k in o["deps"]}
            for o in r.outcomes}


def test_under_xdist_each_test_has_the_dependencies_of_a_plain_run(run, pytester):
    make_package(pytester)
    pytester.mkpydir("pkg2")
    (pytester.path / "pkg2" / "loader.py").write_text(LOADER)
    (pytester.path / "pkg2" / "catalogue.txt").write_text("one two\n")
    pytester.makeconftest(SHARED_CONFTEST.replace("pkg", "pkg2"))
    pytester.makepyfile(
        test_first="def test_first(catalogue):\n    assert catalogue == ['one', 'two']\n",
        test_second="def test_second(catalogue):\n    assert len(catalogue) == 2\n",
    )
    plain = run()
    parallel = run("-n", "2")
    assert plain.ret == parallel.ret == 0
    assert {o["worker"] for o in parallel.outcomes} == {"gw0", "gw1"}
    assert deps_by_test(parallel) == deps_by_test(plain)
    # Each unit is declared once in the file, whichever worker sent it first.
    declared = [u["key"] for line in parallel.lines if line["type"] == "units" for u in line["units"]]
    assert len(declared) == len(set(declared))


def test_installed_packages_and_the_standard_library_are_never_dependencies(run, pytester):
    # A virtual environment and a site-packages directory inside rootdir, on sys.path.
    site = pytester.path / "venv" / "lib" / "site-packages"
    site.mkdir(parents=True)
    (site / "vendored.py").write_text("def work():\n    return 1\n")
    (pytester.path / "venv" / "pyvenv.cfg").write_text("home = /usr\n")
    pytester.makeconftest(f"import sys\nsys.path.insert(0, {str(site)!r})\n")
    pytester.makepyfile(
        test_uses="""
        import json
        import textwrap

        import pytest
        import vendored

        def test_uses_libraries():
            assert json.loads(json.dumps({"a": 1})) == {"a": 1}
            assert textwrap.dedent("  x") == "x"
            assert vendored.work() == 1
            with pytest.raises(ZeroDivisionError):
                1 / 0
        """
    )
    r = run()
    assert r.ret == 0
    paths = {u["path"] for u in r.dep_units("test_uses_libraries")}
    assert paths == {"test_uses.py"}
    assert all(not os.path.isabs(u["path"]) and ".." not in u["path"].split("/") for u in r.units.values())


@pytest.mark.parametrize("how", ["default", "PYTEST_MCP_DEPS=0", "ini off"])
def test_without_dependencies_switched_on_outcomes_carry_none(run, pytester, monkeypatch, how):
    make_package(pytester)
    if how == "PYTEST_MCP_DEPS=0":
        monkeypatch.setenv("PYTEST_MCP_DEPS", "0")
    elif how == "ini off":
        pytester.makeini("[pytest]\nmcp_deps = false\n")  # tox.ini
    r = run(deps=False)
    assert r.ret == 0 and len(r.outcomes) == 4
    assert all("deps" not in o for o in r.outcomes)
    assert not [line for line in r.lines if line["type"] == "units"]
    assert "watched_files" not in r.environment and "packages" not in r.environment


@pytest.mark.parametrize("how", ["PYTEST_MCP_DEPS=1", "ini"])
def test_the_environment_and_the_ini_file_switch_dependencies_on(run, pytester, monkeypatch, how):
    make_package(pytester)
    if how == "ini":
        pytester.makeini("[pytest]\nmcp_deps = true\n")
    else:
        monkeypatch.setenv("PYTEST_MCP_DEPS", "1")
    r = run(deps=False)
    assert r.tests_depending_on("function", "pkg/parser.py", "helper") == {"test_helper"}


def test_a_failure_inside_the_dependency_machinery_warns_once_and_changes_nothing_else(run, pytester):
    make_package(pytester)
    pytester.makepyfile(test_fails="def test_fails():\n    assert False\n")
    pytester.makeconftest(
        """
        from pytest_mcp import _deps

        def broken(path, data):
            raise RuntimeError("parser exploded")

        _deps._analyse = broken
        """
    )
    bare = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=INNER_TIMEOUT)
    r = run()
    assert r.ret == bare.ret == 1
    assert r.result.parseoutcomes() == bare.parseoutcomes()
    deps_warnings = [line for line in warning_lines(r.result) if "dependencies" in line]
    assert len(deps_warnings) == 1
    assert "recording dependencies failed (RuntimeError: parser exploded" in deps_warnings[0]
    assert "not recorded for the rest of the run" in deps_warnings[0]
    assert len(r.outcomes) == 5
    assert all("deps" not in o for o in r.outcomes)


def test_units_are_declared_once_before_the_first_outcome_that_names_them(run, pytester):
    make_package(pytester)
    r = run()
    declared_at: Dict[str, int] = {}
    for index, line in enumerate(r.lines):
        if line["type"] == "units":
            assert line["session_id"] == r.lines[0]["session_id"]
            for unit in line["units"]:
                assert unit["key"] not in declared_at, "declared twice"
                declared_at[unit["key"]] = index
        elif line["type"] == "outcome":
            for key in line["deps"]:
                assert declared_at[key] < index
    assert len(declared_at) == len(r.units) > 0


def test_rerun_attempts_and_a_teardown_error_carry_their_dependencies_and_subtests_none(run, pytester):
    make_package(pytester)
    pytester.makepyfile(
        test_more="""
        import pytest
        from pkg import parser

        FIRST = []

        @pytest.mark.flaky(reruns=1)
        def test_flaky():
            FIRST.append(1)
            assert len(FIRST) > 1 and parser.helper(0) == 1

        @pytest.fixture
        def breaks_after():
            yield
            parser.unused()
            raise RuntimeError("teardown")

        def test_teardown_error(breaks_after):
            pass

        def test_with_subtests(subtests):
            for i in range(2):
                with subtests.test(i=i):
                    assert parser.helper(i) == i + 1
        """
    )
    r = run("test_more.py")
    flaky = [o for o in r.outcomes if o["nodeid"].endswith("test_flaky")]
    assert [(o["outcome"], o["attempt"]) for o in flaky] == [("failed", 1), ("passed", 2)]
    for o in flaky:
        assert ("function", "test_more.py", "test_flaky") in {
            (r.units[k]["kind"], r.units[k]["path"], r.units[k]["name"]) for k in o["deps"]}
    teardown = [o for o in r.outcomes if o["nodeid"].endswith("test_teardown_error")]
    assert [o["phase"] for o in teardown] == ["call", "teardown"]
    assert teardown[0]["deps"] == teardown[1]["deps"]
    names = {r.units[k]["name"] for k in teardown[0]["deps"]}
    assert {"breaks_after", "unused", "test_teardown_error"} <= names
    if not hasattr(pytest, "Subtests"):
        return  # native subtests need pytest 9
    subtests = [o for o in r.outcomes if o["nodeid"].endswith("test_with_subtests") and o.get("subtest")]
    assert len(subtests) == 2 and all("deps" not in o for o in subtests)
    (whole,) = [o for o in r.outcomes if o["nodeid"].endswith("test_with_subtests") and not o.get("subtest")]
    assert ("function", "pkg/parser.py", "helper") in {
        (r.units[k]["kind"], r.units[k]["path"], r.units[k]["name"]) for k in whole["deps"]}


FOREIGN_TRACER = textwrap.dedent(
    """
    import sys
    import pytest

    @pytest.fixture
    def traced():
        def tracer(frame, event, arg):
            return None
        sys.settrace(tracer)
        yield
        sys.settrace(None)

    def test_traced_by_someone_else(traced):
        pass

    def test_untraced():
        pass
    """
)


def test_another_tracer_is_never_replaced_and_its_tests_have_no_dependencies_before_312(run, pytester):
    pytester.makepyfile(test_foreign=FOREIGN_TRACER)
    r = run()
    assert r.ret == 0
    assert r.deps("test_untraced")
    warnings = [line for line in warning_lines(r.result) if "sys.settrace" in line]
    if sys.version_info >= (3, 12):
        # sys.monitoring does not compete with sys.settrace.
        assert "test_traced_by_someone_else" in {n.split("::")[1] for n in (o["nodeid"] for o in r.outcomes)}
        assert r.deps("test_traced_by_someone_else")
        assert not warnings
    else:
        assert "deps" not in r.outcome("test_traced_by_someone_else")
        assert len(warnings) == 1


@pytest.mark.skipif(sys.version_info < (3, 12), reason="sys.monitoring is 3.12+")
@pytest.mark.parametrize("taken", [[3], [3, 4]], ids=["one tool id free", "no tool id free"])
def test_with_sys_monitorings_tool_ids_taken_by_others_deps_are_the_same_or_off_with_a_warning(
    run, pytester, taken
):
    make_package(pytester)
    pytester.makepyfile(test_fails="def test_fails():\n    assert False\n")
    usual = run()
    claims = "".join(f"sys.monitoring.use_tool_id({tool}, 'someone else')\n" for tool in taken)
    pytester.makeconftest("import sys\n" + claims)
    crowded = run()
    assert crowded.ret == usual.ret == 1
    by_test = {o["nodeid"]: o for o in crowded.outcomes}
    if len(taken) == 1:
        # One id: every test re-arms everything (restart_events), same result.
        assert deps_by_test(crowded) == deps_by_test(usual)
        assert not warning_lines(crowded.result)[1:]
    else:
        (warning,) = [line for line in warning_lines(crowded.result) if "dependencies" in line]
        assert "sys.monitoring tool ids 3 and 4 are both in use" in warning
        assert all("deps" not in o for o in by_test.values())


# ---- the working tree now: current_checksums and watched_now -------------------


def test_current_checksums_give_the_recorded_checksums_until_the_code_changes(run, pytester):
    make_package(pytester)
    (pytester.path / "notes.txt").write_text("v1\n")
    pytester.makepyfile(
        test_notes="""
        from pathlib import Path

        def test_notes():
            assert Path(__file__).with_name("notes.txt").read_text() == "v1\\n"
        """
    )
    r = run()
    recorded = r.checksums()
    assert ("file", "notes.txt", "") in recorded
    assert _deps.current_checksums(pytester.path, list(recorded)) == recorded

    (pytester.path / "pkg" / "parser.py").write_text(
        PARSER.replace("return x + 1", "return x - 1").replace('def deep(self):\n            return "deep"', "pass")
    )
    (pytester.path / "notes.txt").write_text("v2\n")
    os.remove(pytester.path / "test_notes.py")
    now = _deps.current_checksums(pytester.path, list(recorded))
    changed = {ref for ref in recorded if now[ref] != recorded[ref]}
    assert changed == {
        ("function", "pkg/parser.py", "helper"),
        ("function", "pkg/parser.py", "Parser.Inner.deep"),
        ("class", "pkg/parser.py", "Parser.Inner"),
        ("file", "notes.txt", ""),
        ("module", "test_notes.py", ""),
        ("function", "test_notes.py", "test_notes"),
    }
    assert now[("function", "pkg/parser.py", "Parser.Inner.deep")] == ""
    assert now[("module", "test_notes.py", "")] == ""
    # The wire's kind numbers work too, and nothing outside rootdir is read.
    unused = _deps.current_checksums(pytester.path, [("function", "pkg/parser.py", "unused")])
    assert len(unused[("function", "pkg/parser.py", "unused")]) == 32
    assert _deps.current_checksums(pytester.path, [(1, "pkg/parser.py", "unused"),
                                                   (4, "../outside.txt", ""),
                                                   ("file", "/etc/hostname", "")]) == {
        (1, "pkg/parser.py", "unused"): unused[("function", "pkg/parser.py", "unused")],
        (4, "../outside.txt", ""): "",
        ("file", "/etc/hostname", ""): "",
    }


def test_two_defs_with_one_name_are_two_units_and_a_file_that_does_not_parse_is_one(pytester):
    pytester.makepyfile(
        props="""
        class C:
            @property
            def x(self):
                return 1

            @x.setter
            def x(self, value):
                pass
        """,
        broken="def f(:\n    pass\n",
    )
    refs = [("function", "props.py", "C.x"), ("function", "props.py", "C.x#2"),
            ("module", "broken.py", ""), ("function", "broken.py", "f")]
    sums = _deps.current_checksums(pytester.path, refs)
    assert sums[refs[0]] and sums[refs[1]] and sums[refs[0]] != sums[refs[1]]
    assert sums[refs[2]] and sums[refs[3]] == ""


def python_other_than_this() -> Optional[str]:
    """Another CPython 3.9+ on this machine (pyenv's, or on PATH), to compare checksums with."""
    candidates: List[Optional[str]] = []
    # Not Path.home(): pytester points HOME at the test's directory.
    import pwd

    pyenv = Path(os.environ.get("PYENV_ROOT") or Path(pwd.getpwuid(os.getuid()).pw_dir) / ".pyenv") / "versions"
    if pyenv.is_dir():
        candidates += sorted((str(p / "bin" / "python") for p in pyenv.iterdir()), reverse=True)
    candidates += [shutil.which(f"python3.{minor}") for minor in range(14, 8, -1)]
    check = "import sys; print(sys.version_info[:2] >= (3, 9) and tuple(sys.version_info[:2]) != %r)" % (
        tuple(sys.version_info[:2]),)
    for candidate in candidates:
        if not candidate or not os.path.exists(candidate):
            continue
        try:
            done = subprocess.run([candidate, "-c", check], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0 and done.stdout.strip() == "True":
            return candidate
    return None


def test_checksums_are_the_same_on_every_python(pytester, tmp_path):
    other = python_other_than_this()
    if other is None:
        pytest.skip("no second Python 3.9+ on this machine")
    source = Path(_deps.__file__).read_text()  # a real file with every kind of statement
    (pytester.path / "sample.py").write_text(source)
    refs = [(u[_deps.KIND], "sample.py", u[_deps.NAME])
            for u in _deps._analyse("sample.py", source.encode()).units]
    here = _deps.current_checksums(pytester.path, refs)
    # _deps imports pytest for its hook markers; the other Python may have none.
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "pytest.py").write_text("def hookimpl(**kwargs):\n    return lambda f: f\n")
    package = Path(_deps.__file__).parent
    (stub / "pytest_mcp").mkdir()
    (stub / "pytest_mcp" / "__init__.py").write_text("")
    shutil.copy(package / "_deps.py", stub / "pytest_mcp" / "_deps.py")
    script = (
        "import json, sys\n"
        "from pytest_mcp import _deps\n"
        "refs = [tuple(r) for r in json.loads(sys.argv[2])]\n"
        "print(json.dumps([[list(k), v] for k, v in _deps.current_checksums(sys.argv[1], refs).items()]))\n"
    )
    done = subprocess.run([other, "-c", script, str(pytester.path), json.dumps(refs)],
                          env={"PYTHONPATH": str(stub), "PATH": os.environ.get("PATH", "")},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    there = {tuple(k): v for k, v in json.loads(done.stdout)}
    assert there == here and all(here.values())


def test_watched_files_are_conftests_anywhere_and_project_files_at_rootdir(run, pytester):
    make_package(pytester)
    for rel in ("conftest.py", "tests/conftest.py", "tests/deep/conftest.py", "requirements-dev.txt",
                "uv.lock", "pyproject.toml", "setup.cfg",
                # not watched: in a virtual environment, a hidden or a build directory, or not at rootdir
                ".venv/lib/conftest.py", "node_modules/x/conftest.py", "build/conftest.py",
                "sub/pyproject.toml"):
        path = pytester.path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text = {".py": f"# {rel}\n", "toml": "[tool.x]\n", ".cfg": "[metadata]\n"}
        path.write_text(next((t for end, t in text.items() if rel.endswith(end)), "x\n"))
    r = run()
    watched = r.environment["watched_files"]
    assert sorted(watched) == ["conftest.py", "pyproject.toml", "requirements-dev.txt", "setup.cfg",
                               "tests/conftest.py", "tests/deep/conftest.py", "tox.ini", "uv.lock"]
    assert watched == _deps.watched_now(pytester.path)
    import hashlib

    assert watched["tests/conftest.py"] == hashlib.blake2b(b"# tests/conftest.py\n", digest_size=16).hexdigest()
    assert len(r.environment["packages"]) == 32
    assert _deps.watched_now(pytester.path, ["*.cfg"]) == {"setup.cfg": watched["setup.cfg"]}


def test_watched_files_come_from_git_when_the_project_is_a_checkout(pytester):
    if shutil.which("git") is None:
        pytest.skip("no git")
    for rel in ("tests/conftest.py", "ignored/conftest.py", "conftest.py"):
        path = pytester.path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# conftest\n")
    (pytester.path / ".gitignore").write_text("ignored/\n")
    subprocess.run(["git", "init", "-q"], cwd=pytester.path, check=True)
    assert sorted(_deps.watched_now(pytester.path)) == ["conftest.py", "tests/conftest.py"]


# ---- the wire: units declared until a batch that declared them is acknowledged ------


class Recorder(recorder_pb2_grpc.RecorderServicer):
    """A recorder that checks what a real one would: every key an outcome names
    is declared in its request or in one acknowledged before. Its first stream
    (anywhere) takes one batch, does not acknowledge it, and fails."""

    def __init__(self, shared: dict) -> None:
        self.shared = shared  # one "database" for every address

    def StartSession(self, request, context):
        self.shared["environment"] = request.environment
        return pb.StartSessionResponse(session=pb.Session(id=request.session_id))

    def StreamOutcomes(self, request_iterator, context):
        shared = self.shared
        shared["streams"] += 1
        first_stream = shared["streams"] == 1
        for request in request_iterator:
            declared = {u.key for u in request.units}
            shared["requests"].append((shared["streams"], request))
            for outcome in request.outcomes:
                if outcome.HasField("deps"):
                    missing = set(outcome.deps.units) - declared - shared["stored"]
                    if missing:
                        shared["errors"].append((outcome.nodeid, len(missing)))
            if first_stream:
                context.abort(grpc.StatusCode.UNAVAILABLE, "going away before committing")
            shared["stored"] |= declared
            shared["outcomes"].extend(request.outcomes)
            yield pb.StreamOutcomesResponse(session_id=request.session_id,
                                            acked_seq=request.outcomes[-1].seq)

    def FinishSession(self, request, context):
        return pb.FinishSessionResponse(session=pb.Session(id=request.session_id))


@pytest.fixture
def recorders():
    shared = {"streams": 0, "requests": [], "stored": set(), "errors": [], "outcomes": []}
    servers, addresses = [], []
    for _ in range(2):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        recorder_pb2_grpc.add_RecorderServicer_to_server(Recorder(shared), server)
        addresses.append(f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}")
        server.start()
        servers.append(server)
    yield shared, addresses
    for server in servers:
        server.stop(0)


@pytest.mark.parametrize("where", ["same recorder", "failover"])
def test_units_are_declared_again_after_a_batch_that_declared_them_was_not_acknowledged(
    pytester, recorders, spool_dir, where
):
    shared, addresses = recorders
    pytester.makeini("[pytest]\n")
    make_package(pytester)
    # Slow enough for several batches (the sender sends every 0.25 s).
    pytester.makepyfile(
        test_slow="""
        import time
        import pytest
        from pkg import parser

        @pytest.mark.parametrize("i", range(8))
        def test_slow(i):
            time.sleep(0.15)
            assert parser.helper(i) == i + 1
        """
    )
    address = addresses[0] if where == "same recorder" else ",".join(addresses)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--mcp", "--mcp-deps", f"--mcp-address={address}",
        f"--mcp-spool={spool_dir}", "--mcp-timeout=20", timeout=INNER_TIMEOUT,
    )
    assert result.ret == 0
    assert shared["errors"] == []
    assert shared["streams"] >= 2
    first = [req for stream, req in shared["requests"] if stream == 1]
    later = [req for stream, req in shared["requests"] if stream > 1]
    assert first and later
    # What the failed stream declared is declared again.
    assert {u.key for u in first[0].units} <= {u.key for req in later for u in req.units}
    stored = {o.nodeid for o in shared["outcomes"]}
    assert len(stored) == 12
    helper_tests = [o for o in shared["outcomes"] if "test_slow" in o.nodeid]
    assert helper_tests and all(o.HasField("deps") for o in helper_tests)
    # The test, its module, the helper and its module; and what importing
    # the package ran: its __init__ and the parser's two class bodies.
    assert {len(o.deps.units) for o in helper_tests} == {7}, [list(o.deps.units) for o in helper_tests]
    kinds = {u.kind for _stream, req in shared["requests"] for u in req.units}
    assert kinds == {pb.UNIT_KIND_FUNCTION, pb.UNIT_KIND_CLASS, pb.UNIT_KIND_MODULE}
    assert "tox.ini" in shared["environment"].watched_files
    assert len(shared["environment"].packages) == 32
