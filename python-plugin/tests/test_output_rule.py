"""What the plugin sends of captured output: pytest shows it only for tests
that did not pass, so a passing test's output goes over the wire only to a
recorder that says it keeps it (``serve --keep-passing-output``).

The recorder here is a real grpcio server in the test process that records
every outcome it receives, so the test sees the wire, not the store.
"""

from __future__ import annotations

import textwrap
from concurrent import futures

import grpc
import pytest

from conftest import session_id_of
from pytest_mcp._proto import recorder_pb2 as pb
from pytest_mcp._proto import recorder_pb2_grpc

SUITE = textwrap.dedent(
    """
    import logging

    def test_passes():
        print("passing output")
        logging.getLogger("x").warning("passing log")

    def test_fails():
        print("failing output")
        assert False
    """
)


class Recording(recorder_pb2_grpc.RecorderServicer):
    """Acknowledges everything and keeps what arrived."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.received = []

    def StartSession(self, request, context):
        return pb.StartSessionResponse(
            session=pb.Session(id=request.session_id), keep_passing_output=self.keep
        )

    def StreamOutcomes(self, request_iterator, context):
        for request in request_iterator:
            self.received.extend(request.outcomes)
            yield pb.StreamOutcomesResponse(
                session_id=request.session_id, acked_seq=request.outcomes[-1].seq
            )

    def FinishSession(self, request, context):
        return pb.FinishSessionResponse(session=pb.Session(id=request.session_id))


@pytest.fixture(params=[False, True], ids=["drops", "keeps"])
def recorder(request):
    servicer = Recording(keep=request.param)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    recorder_pb2_grpc.add_RecorderServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def test_passing_output_is_sent_only_to_a_recorder_that_keeps_it(pytester, run_mcp, recorder):
    servicer, address = recorder
    pytester.makepyfile(test_out=SUITE)
    result = run_mcp(address=address)
    assert result.ret == 1
    assert session_id_of(result)
    by_name = {o.nodeid.split("::")[1]: o for o in servicer.received}
    passed, failed = by_name["test_passes"], by_name["test_fails"]
    if servicer.keep:
        assert passed.stdout == "passing output\n" and "passing log" in passed.log
    else:
        assert (passed.stdout, passed.stderr, passed.log) == ("", "", "")
    assert failed.stdout == "failing output\n"
