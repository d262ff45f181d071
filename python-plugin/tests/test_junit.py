"""A generated suite of 2000 tests: what is stored agrees with pytest's terminal
summary and, test by test, with pytest's own --junitxml of the same run."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import defaultdict

from conftest import counts_of, session_id_of, summary_counts, warning_lines
from pytest_mcp._proto import recorder_pb2 as pb

MODULES = 20
PER_MODULE = 100  # tests per module, so 2000 in all


def module_source(m: int) -> str:
    lines = ["import pytest", "", ""]
    n = 0
    for i in range(PER_MODULE - 10 - 2):
        k = m * PER_MODULE + i
        if k % 50 == 7:
            lines += [f"def test_{i}():", f"    assert {k} == {k} + 1, 'off by one'"]
        elif k % 33 == 5:
            lines += [f"def test_{i}():", f"    pytest.skip('skipped {k}')"]
        elif k % 97 == 11:
            lines += ["@pytest.mark.xfail(reason='known')", f"def test_{i}():", "    raise KeyError(1)"]
        elif k % 101 == 13:
            lines += ["@pytest.mark.xfail(reason='fixed?')", f"def test_{i}():", "    pass"]
        elif k % 151 == 17:
            lines += ["@pytest.mark.xfail(reason='strict', strict=True)", f"def test_{i}():", "    pass"]
        else:
            lines += [f"def test_{i}():", f"    print('out {k}')"]
        lines.append("")
        n += 1
    lines += [
        "@pytest.mark.parametrize('p', range(10))",
        "def test_param(p):",
        f"    assert (p + {m}) % 9 != 4",
        "",
        "class TestGroup:",
        "    def test_method(self):",
        "        pass",
        "",
    ]
    n += 11
    if m == 3:
        lines += [
            "@pytest.fixture",
            "def broken():",
            "    raise RuntimeError('setup broke')",
            "",
            "def test_setup_error(broken):",
            "    pass",
            "",
        ]
    elif m == 5:
        lines += [
            "@pytest.fixture",
            "def bad_teardown():",
            "    yield",
            "    raise RuntimeError('teardown broke')",
            "",
            "def test_teardown_error(bad_teardown):",
            "    pass",
            "",
            "def test_failure_and_teardown_error(bad_teardown):",
            "    assert 0",
            "",
        ]
    else:
        lines += ["def test_filler():", "    pass", ""]
    return "\n".join(lines)


def junit_kind(case) -> str:
    children = [c for c in case if c.tag in ("failure", "error", "skipped")]
    if not children:
        return "pass"
    (child,) = children
    if child.tag == "failure":
        return "failure"
    if child.tag == "error":
        message = child.get("message", "")
        return "error-teardown" if "teardown" in message else "error-setup"
    return "xfail" if child.get("type") == "pytest.xfail" else "skipped"


STORED_KIND = {
    pb.TEST_OUTCOME_PASSED: "pass",
    pb.TEST_OUTCOME_XPASSED: "pass",
    pb.TEST_OUTCOME_FAILED: "failure",
    pb.TEST_OUTCOME_SKIPPED: "skipped",
    pb.TEST_OUTCOME_XFAILED: "xfail",
}


def stored_kind(o) -> str:
    if o.outcome == pb.TEST_OUTCOME_ERROR:
        return "error-teardown" if o.phase == pb.PHASE_TEARDOWN else "error-setup"
    return STORED_KIND[o.outcome]


def test_a_generated_suite_agrees_with_the_terminal_summary_and_junitxml(
    pytester, run_mcp, server
):
    for m in range(MODULES):
        pytester.makepyfile(**{f"test_gen_{m:02d}": module_source(m)})
    xml_path = pytester.path / "junit.xml"
    result = run_mcp(f"--junitxml={xml_path}", "-o", "junit_family=xunit1")
    assert result.ret == 1
    assert warning_lines(result) == []

    session = server.session(session_id_of(result))
    outcomes = server.outcomes(session.id)
    terminal = summary_counts(result)
    assert sum(terminal.values()) > 2000
    assert counts_of(session.summary) == terminal
    assert counts_of(session.counts) == terminal
    assert session.summary.exitstatus == 1
    assert session.outcomes_stored == session.outcomes_expected == len(outcomes)

    stored = defaultdict(list)
    for o in outcomes:
        stored[o.nodeid].append(o)
    cases = defaultdict(list)
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        path = case.get("file")
        module = path[: -len(".py")].replace("/", ".")
        inner = case.get("classname")[len(module) :].lstrip(".")
        nodeid = "::".join(p for p in (path, inner, case.get("name")) if p)
        cases[nodeid].append(case)
    assert sorted(stored) == sorted(cases)

    for nodeid, junit in cases.items():
        mine = stored[nodeid]
        kinds = [stored_kind(o) for o in mine]
        # JUnit keeps a passing test whose teardown errors as one testcase.
        if kinds == ["pass", "error-teardown"]:
            kinds = ["error-teardown"]
        assert kinds == [junit_kind(c) for c in junit], nodeid
        first = junit[0]
        assert mine[0].file == first.get("file"), nodeid
        assert mine[0].line == int(first.get("line")) + 1, nodeid
        junit_time = sum(float(c.get("time")) for c in junit)
        assert abs(sum(o.duration for o in mine) - junit_time) < 0.0006 * (len(junit) + 1), nodeid
        for o, case in zip(mine, junit):
            (child,) = [c for c in case if c.tag in ("failure", "error", "skipped")] or [None]
            if child is None:
                assert o.message in ("", "fixed?"), nodeid
            elif child.tag == "error":
                assert o.message in child.get("message"), nodeid
            else:
                assert o.message == child.get("message").split("\n")[0], nodeid
            if child is not None and child.tag == "failure":
                assert o.longrepr and o.longrepr.strip() in child.text, nodeid
