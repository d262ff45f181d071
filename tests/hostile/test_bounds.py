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
