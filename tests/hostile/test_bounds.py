"""Hostile clients against the recorder's bounds: answers bounded in bytes,
one set of input limits on gRPC, MCP and import, errors that echo only a
prefix of what they refuse, exports that never leave half a file, a
read-only database named as such, and a spool line too long to parse.

Each test plays the attack for real against `pytest-mcp serve` (or the CLI)
and asserts what the attacker and a healthy client see.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid

import grpc
import pytest
from conftest import mcp_fixtures, post_jsonrpc, recorder_stub, rss_mb

from pytest_mcp._proto import recorder_pb2, recorder_pb2_grpc

MB = 1024 * 1024

# The server's bound on one page of a read (model::MAX_PAGE_BYTES) and the
# largest outcome this test plants: a page may exceed the bound by one row.
PAGE_BYTES = 2 * MB
FIELD = 64 * 1024
ROW = 4 * FIELD + 4096

# Failures planted with four 64 KiB text fields each: 480 of them make an
# unbounded page of 10,000 rows about 126 MB, while the (compressed) database
# stays small. The crash message stays short: a 64 KiB one is the text
# engineer's pathology (fingerprinting), not this test's.
PLANTED = 480


def big_failure(seq: int) -> recorder_pb2.Outcome:
    text = chr(ord("a") + seq % 26) * FIELD
    return recorder_pb2.Outcome(
        seq=seq, nodeid=f"tests/test_big.py::test_{seq}", outcome=recorder_pb2.TEST_OUTCOME_FAILED,
        phase=recorder_pb2.PHASE_CALL, duration=0.01, message=f"AssertionError {seq}", longrepr=text, stdout=text,
        stderr=text, log=text, file="tests/test_big.py", line=7, attempt=1)


def plant_large_failures(server, count: int = PLANTED) -> str:
    """A finished session of `count` failures whose text fields are each 64 KiB."""
    channel, stub = recorder_stub(server)
    sid = str(uuid.uuid4())
    try:
        stub.StartSession(recorder_pb2.StartSessionRequest(
            session_id=sid, source=recorder_pb2.SOURCE_PLUGIN,
            environment=recorder_pb2.Environment(os="Linux", python_version="3.12", project="big")),
            timeout=30)
        batches = [
            recorder_pb2.StreamOutcomesRequest(
                session_id=sid, outcomes=[big_failure(s) for s in range(first, min(first + 8, count + 1))])
            for first in range(1, count + 1, 8)
        ]
        acks = list(stub.StreamOutcomes(iter(batches), timeout=120))
        assert acks[-1].acked_seq == count
        stub.FinishSession(recorder_pb2.FinishSessionRequest(
            session_id=sid, outcomes_sent=count,
            summary=recorder_pb2.Summary(total_tests=count, failed=count, exitstatus=1)), timeout=30)
    finally:
        channel.close()
    return sid


class PeakRss:
    """Samples a process's resident memory in the background; `peak` is the highest seen."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, rss_mb(pid), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def test_listing_failures_with_megabytes_of_text_answers_in_pages_bounded_in_bytes(server):
    sid = plant_large_failures(server)
    small = grpc.insecure_channel(server.grpc_addr,
                                  options=[("grpc.max_receive_message_length", 4 * MB)])
    large, _ = recorder_stub(server)
    answers: dict[str, object] = {}

    def list_all(name: str, channel) -> None:
        stub = recorder_pb2_grpc.RecorderStub(channel)
        try:
            answers[name] = stub.ListOutcomes(
                recorder_pb2.ListOutcomesRequest(session_id=sid, page_size=10_000), timeout=60)
        except grpc.RpcError as e:  # recorded, asserted below
            answers[name] = e

    try:
        with PeakRss(server.process.pid) as rss:
            callers = [threading.Thread(target=list_all, args=(n, c))
                       for n, c in (("4 MB client", small), ("64 MB client", large))]
            for t in callers:
                t.start()
            for t in callers:
                t.join(90)
            # Every page after the first, with the client that refuses over 4 MB.
            stub = recorder_pb2_grpc.RecorderStub(small)
            seqs = [o.seq for o in answers["4 MB client"].outcomes]
            token = answers["4 MB client"].next_page_token
            pages = 1
            while token:
                page = stub.ListOutcomes(recorder_pb2.ListOutcomesRequest(
                    session_id=sid, page_size=10_000, page_token=token), timeout=60)
                assert page.ByteSize() <= PAGE_BYTES + ROW
                seqs += [o.seq for o in page.outcomes]
                token, pages = page.next_page_token, pages + 1
            # The MCP tool and the session's page read the same rows.
            status, reply = post_jsonrpc(server, "tools/call",
                                         {"name": "get_failures", "arguments": {"session": sid, "limit": 200}},
                                         name="get_failures")
            import httpx2 as httpx
            page_html = httpx.get(f"{server.mcp_url.removesuffix('/mcp')}/sessions/{sid}", timeout=60)
    finally:
        small.close()
        large.close()

    for name, answer in answers.items():
        assert isinstance(answer, recorder_pb2.ListOutcomesResponse), f"{name}: {answer}"
        assert 0 < answer.ByteSize() <= PAGE_BYTES + ROW, name
        assert answer.next_page_token, f"{name}: a cut page gives the token to the rest"
    assert seqs == list(range(1, PLANTED + 1)), "paging by bytes skipped or repeated outcomes"
    assert pages > 10
    assert status == 200 and "result" in reply, reply
    assert len(json.dumps(reply)) < 256 * 1024
    assert not reply["result"].get("isError"), str(reply)[:2000]
    structured = reply["result"]["structuredContent"]
    assert structured["truncated"] and structured["next_cursor"], structured.keys()
    assert page_html.status_code == 200
    assert len(page_html.content) < 8 * MB
    assert rss.peak < 200, f"server RSS peaked at {rss.peak:.0f} MB"


def binary() -> str:
    return mcp_fixtures.binary()


def tool(server, name: str, arguments: dict) -> dict:
    """Calls an MCP tool over stateless HTTP; returns its result (an error result included)."""
    status, reply = post_jsonrpc(server, "tools/call", {"name": name, "arguments": arguments}, name=name)
    assert status == 200, reply
    return reply.get("result") or {"isError": True, "error": reply.get("error")}


def error_text(result: dict) -> str:
    if result.get("error"):
        return json.dumps(result["error"])
    return " ".join(c.get("text", "") for c in result.get("content", []))


def test_a_huge_project_name_or_environment_is_refused_on_mcp_as_on_grpc_and_listings_stay_small(server):
    huge_project = tool(server, "record_session_start", {
        "environment": {"os": "Linux", "python_version": "3.12", "project": "p" * (3 * MB)}})
    assert huge_project["isError"], huge_project
    assert "environment.project" in error_text(huge_project)
    assert len(error_text(huge_project)) < 8192, "the refusal echoed the input"
    huge_environment = tool(server, "record_session_start", {
        "environment": {"os": "L" * (1 * MB), "python_version": "3.12", "project": "demo"}})
    assert huge_environment["isError"], huge_environment
    assert "environment" in error_text(huge_environment)
    # The same environment over gRPC is refused with the same field.
    channel, stub = recorder_stub(server)
    with channel:
        with pytest.raises(grpc.RpcError) as refused:
            stub.StartSession(recorder_pb2.StartSessionRequest(
                session_id=str(uuid.uuid4()),
                environment=recorder_pb2.Environment(os="L" * MB, python_version="3.12")), timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details().startswith("environment:")
        # Sessions with the largest environment allowed list in bounded pages.
        for _ in range(12):
            stub.StartSession(recorder_pb2.StartSessionRequest(
                session_id=str(uuid.uuid4()),
                environment=recorder_pb2.Environment(os="L" * (250 * 1024), python_version="3.12",
                                                     project="demo")), timeout=30)
        page = stub.ListSessions(recorder_pb2.ListSessionsRequest(page_size=1000), timeout=30)
    assert page.ByteSize() <= PAGE_BYTES + 300 * 1024
    assert page.next_page_token
    listed = tool(server, "list_sessions", {"limit": 100})
    assert not listed["isError"]
    assert len(json.dumps(listed)) < 256 * 1024


def write_spool(path, lines: list[dict]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def run_import(db, spool) -> subprocess.CompletedProcess:
    return subprocess.run([binary(), "import", str(spool), "--db", str(db)],
                          capture_output=True, text=True, timeout=120)


def test_an_imported_spool_meets_the_same_limits_as_grpc_and_mcp(tmp_path):
    sid = str(uuid.uuid4())
    spool = tmp_path / "spool.jsonl"
    write_spool(spool, [
        {"type": "start", "session_id": sid,
         "environment": {"os": "Linux", "python_version": "3.12", "project": "demo",
                         "extra": {"blob": "x" * MB}}},
        {"type": "outcome", "session_id": sid, "seq": 1, "nodeid": "", "outcome": "passed"},
        {"type": "finish", "session_id": sid, "outcomes_sent": 1,
         "summary": {"total_tests": 0, "passed": 1, "exitstatus": 0}},
    ])
    out = run_import(tmp_path / "db.sqlite", spool)
    report = out.stdout + out.stderr
    assert f"{spool}:1: environment: " in report, report
    assert "limit is 262144" in report
    assert len(report) < 64 * 1024, "the refusal echoed the environment"


def test_grpc_refuses_an_empty_nodeid_impossible_counts_and_times_as_mcp_does(server):
    channel, stub = recorder_stub(server)
    sid = str(uuid.uuid4())
    with channel:
        stub.StartSession(recorder_pb2.StartSessionRequest(
            session_id=sid, environment=recorder_pb2.Environment(os="Linux", project="demo")), timeout=30)
        replies = stub.StreamOutcomes(iter([recorder_pb2.StreamOutcomesRequest(session_id=sid, outcomes=[
            recorder_pb2.Outcome(seq=1, nodeid="", outcome=recorder_pb2.TEST_OUTCOME_PASSED)])]), timeout=30)
        with pytest.raises(grpc.RpcError) as empty:
            list(replies)
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "outcomes[0].nodeid: must not be empty" in empty.value.details()

        def finish(**kw):
            summary = kw.pop("summary", recorder_pb2.Summary(total_tests=0))
            return stub.FinishSession(recorder_pb2.FinishSessionRequest(
                session_id=sid, summary=summary, **kw), timeout=30)

        for kw, field in [
            ({"summary": recorder_pb2.Summary(total_tests=1, passed=5)}, "summary.total_tests"),
            ({"summary": recorder_pb2.Summary(total_tests=2**64 - 1, passed=2**64 - 1)}, "summary.total_tests"),
            ({"outcomes_sent": 2**64 - 1}, "outcomes_sent"),
            ({"finished_at": {"seconds": 0}}, "finished_at"),
            ({"finished_at": {"seconds": 253402300799}}, "finished_at"),
        ]:
            with pytest.raises(grpc.RpcError) as refused:
                finish(**kw)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, kw
            assert refused.value.details().startswith(f"{field}:"), (kw, refused.value.details())
        # Nothing refused was stored: the session is still running.
        got = stub.GetSession(recorder_pb2.GetSessionRequest(session_id=sid), timeout=30)
        assert got.session.status == recorder_pb2.SESSION_STATUS_RUNNING

        # A session dated in year 9999 would be `latest` forever.
        with pytest.raises(grpc.RpcError) as future:
            stub.StartSession(recorder_pb2.StartSessionRequest(
                session_id=str(uuid.uuid4()), started_at={"seconds": 253402300799},
                environment=recorder_pb2.Environment(os="Linux", project="demo")), timeout=30)
        assert future.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert future.value.details().startswith("started_at:")
        latest = stub.GetSession(recorder_pb2.GetSessionRequest(session_id="latest"), timeout=30)
        assert latest.session.id == sid


def test_errors_quote_only_a_prefix_of_a_megabyte_of_input(server):
    channel, stub = recorder_stub(server)
    huge = "z" * MB
    with channel:
        stub.StartSession(recorder_pb2.StartSessionRequest(
            session_id=str(uuid.uuid4()), environment=recorder_pb2.Environment(project="demo")), timeout=30)
        for call in (
            lambda: stub.GetSession(recorder_pb2.GetSessionRequest(session_id=huge), timeout=30),
            lambda: stub.ListSessions(recorder_pb2.ListSessionsRequest(page_token=huge), timeout=30),
            lambda: stub.ListOutcomes(recorder_pb2.ListOutcomesRequest(session_id="latest", page_token=huge),
                                      timeout=30),
            lambda: stub.FinishSession(recorder_pb2.FinishSessionRequest(
                session_id=huge, summary=recorder_pb2.Summary()), timeout=30),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
            assert "zzzz" in refused.value.details()
            assert len(refused.value.details()) < 4096 + 100, len(refused.value.details())
    result = tool(server, "get_session", {"session": huge})
    assert result["isError"]
    assert len(error_text(result)) < 8192
    # Nor does the server's log hold the megabyte.
    assert all(len(line) < 8192 for line in server.stderr)


def big_session_db(tmp_path, count: int = 40) -> tuple[str, object]:
    """A database (on the test's server, then stopped) holding one session
    whose export is several megabytes: more than a pipe holds."""
    s = mcp_fixtures.start_server(tmp_path / "big.db")
    try:
        sid = plant_large_failures(s, count)
    finally:
        s.process.terminate()
        s.process.wait(timeout=15)
    return sid, s.db


def test_an_export_that_fails_half_way_leaves_the_old_file_and_one_cut_off_by_head_ends_quietly(tmp_path):
    sid, db = big_session_db(tmp_path)
    target = tmp_path / "export.json"
    target.write_text("the previous export\n")
    # Killed half way: the old file is still whole.
    export = subprocess.Popen([binary(), "export", sid, "--db", db, "-o", str(target)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    partial = []
    while time.monotonic() < deadline and export.poll() is None:
        partial = [p for p in tmp_path.iterdir() if p.name.startswith(".export.json.")]
        if partial:
            break
        time.sleep(0.001)
    export.kill()
    export.wait(timeout=15)
    assert partial, "the export wrote no temporary file beside its target"
    assert target.read_text() == "the previous export\n"
    # Completed: the file is replaced whole, and no temporary file is left.
    done = subprocess.run([binary(), "export", sid, "--db", db, "-o", str(target)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(target.read_text())["session"]["id"] == sid
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export.json.") and p not in partial]
    # `export | head`: the reader leaves; the export ends without a word.
    piped = subprocess.Popen([binary(), "export", sid, "--db", db], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    assert piped.stdout.read(100)
    piped.stdout.close()
    _, stderr = piped.communicate(timeout=60)
    assert piped.returncode == 0, stderr
    assert stderr == b""


def make_read_only(path) -> list[str]:
    """A command prefix that runs with `path` read-only for root too: the
    file made immutable (chattr +i) or, where the file system has no such
    flag, bind-mounted read-only in a private mount namespace. Root ignores
    file modes, so chmod would prove nothing here."""
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
        return []
    d = path.parent
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount --bind -o ro '{d}' '{d}'"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip("neither chattr +i nor a read-only bind mount works here")
    return ["unshare", "-rm", "sh", "-c", f"mount --bind -o ro '{d}' '{d}' && exec \"$@\"", "sh"]


def test_serve_refuses_a_read_only_database_and_says_read_only(tmp_path):
    sid, db = big_session_db(tmp_path, count=1)
    db_path = tmp_path / "big.db"
    wrap = make_read_only(db_path)
    try:
        serve = subprocess.run([*wrap, binary(), "serve", "--db", db, "--grpc-addr", "127.0.0.1:0",
                                "--http-addr", "127.0.0.1:0"], capture_output=True, text=True, timeout=15)
        assert serve.returncode != 0
        assert "read-only" in serve.stderr, serve.stderr
        assert "internal error" not in serve.stderr
        spool = tmp_path / "spool.jsonl"
        write_spool(spool, [{"type": "start", "session_id": str(uuid.uuid4()), "environment": {}}])
        imported = subprocess.run([*wrap, binary(), "import", str(spool), "--db", db],
                                  capture_output=True, text=True, timeout=30)
        assert imported.returncode != 0 and "read-only" in imported.stderr, imported.stderr
        # Reading it still works.
        show = subprocess.run([*wrap, binary(), "sessions", "--db", db, "--all-projects"],
                              capture_output=True, text=True, timeout=30)
        assert show.returncode == 0, show.stderr
        assert sid[:8] in show.stdout
    finally:
        subprocess.run(["chattr", "-i", str(db_path)], capture_output=True)


def test_a_spool_line_of_a_hundred_megabytes_is_refused_before_it_is_parsed(tmp_path):
    sid = str(uuid.uuid4())
    spool = tmp_path / "spool.jsonl"
    with spool.open("w") as f:
        f.write(json.dumps({"type": "start", "session_id": sid, "environment": {"project": "demo"}}) + "\n")
        f.write('{"type": "outcome", "session_id": "%s", "seq": 1, "nodeid": "t.py::t", '
                '"outcome": "failed", "longrepr": "' % sid)
        chunk = "y" * MB
        for _ in range(100):
            f.write(chunk)
        f.write('"}\n')
        f.write(json.dumps({"type": "outcome", "session_id": sid, "seq": 1, "nodeid": "t.py::t",
                            "outcome": "passed"}) + "\n")
    importer = subprocess.Popen([binary(), "import", str(spool), "--db", str(tmp_path / "db.sqlite")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while importer.poll() is None:
        try:
            peak = max(peak, rss_mb(importer.pid))
        except (AssertionError, FileNotFoundError):
            break
        time.sleep(0.01)
    out, err = importer.communicate(timeout=120)
    report = out + err
    assert f"{spool}:2: the line is " in report, report
    assert "longer than the limit" in report
    assert len(report) < 64 * 1024
    assert peak < 100, f"import peaked at {peak:.0f} MB for a 100 MB line"
    # The lines around it were imported.
    show = subprocess.run([binary(), "show", sid, "--db", str(tmp_path / "db.sqlite")],
                          capture_output=True, text=True, timeout=30)
    assert show.returncode == 0 and "1 outcomes: 1 passed" in show.stdout, show.stdout + show.stderr
