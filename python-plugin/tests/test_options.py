"""How recording is switched on and configured, and that off means off."""

from __future__ import annotations

import subprocess
import textwrap
import threading
from concurrent import futures

import grpc
import pytest

from conftest import INNER_TIMEOUT, session_id_of, warning_lines
from pytest_mcp import _environment
from pytest_mcp._proto import recorder_pb2 as pb


def test_help_lists_the_options_in_their_own_group(pytester):
    result = pytester.runpytest_subprocess("--help", timeout=INNER_TIMEOUT)
    assert result.ret == 0
    text = result.stdout.str()
    group = text[text.index("pytest-mcp (record results in a pytest-mcp server):") :]
    group = group[: group.index("\n\n")]
    for option in ("--mcp ", "--mcp-address", "--mcp-token", "--mcp-spool", "--mcp-timeout",
                   "--mcp-quarantine", "--mcp-deps"):
        assert option in group
    # What --mcp-deps cannot see is said where the option is.
    assert "subprocesses is not seen" in " ".join(group.split())
    for ini in ("mcp (bool)", "mcp_address (string)", "mcp_spool (string)", "mcp_timeout (string)",
                "mcp_quarantine (bool)", "mcp_deps (bool)"):
        assert ini in text


NOTHING_LOADED = textwrap.dedent(
    """
    import sys
    import threading

    def test_plugin_stays_out_of_the_way(pytestconfig):
        assert pytestconfig.pluginmanager.has_plugin("mcp")
        assert pytestconfig.pluginmanager.get_plugin("mcp-reporter") is None
        assert pytestconfig.pluginmanager.get_plugin("mcp-markers") is None
        assert "grpc" not in sys.modules
        assert not [m for m in sys.modules if m.startswith("pytest_mcp._")]
        assert not [t for t in threading.enumerate() if t.name.startswith("pytest-mcp")]
    """
)


@pytest.mark.parametrize("switch", [None, "PYTEST_MCP=0", "ini"])
def test_when_not_enabled_the_plugin_loads_nothing_and_starts_no_thread(
    pytester, monkeypatch, switch
):
    if switch == "PYTEST_MCP=0":
        monkeypatch.setenv("PYTEST_MCP", "0")
    elif switch == "ini":
        pytester.makeini("[pytest]\nmcp = false\n")
    pytester.makepyfile(test_off=NOTHING_LOADED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=INNER_TIMEOUT)
    result.assert_outcomes(passed=1)
    assert not [line for line in result.outlines if "pytest-mcp" in line]


def test_the_ini_switch_and_the_address_variable_enable_recording(
    pytester, server, monkeypatch, spool_dir
):
    pytester.makeini("[pytest]\nmcp = true\n")
    monkeypatch.setenv("PYTEST_MCP_ADDRESS", server.addr)
    monkeypatch.setenv("PYTEST_MCP_SPOOL", str(spool_dir))
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=INNER_TIMEOUT)
    assert result.ret == 0
    session = server.session(session_id_of(result))
    assert [o.nodeid for o in server.outcomes(session.id)] == ["test_one.py::test_one"]


def test_the_environment_variable_enables_recording_and_the_flag_beats_the_ini_address(
    pytester, server, monkeypatch, spool_dir
):
    pytester.makeini("[pytest]\nmcp_address = 127.0.0.1:1\n")
    monkeypatch.setenv("PYTEST_MCP", "1")
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--mcp-address={server.addr}", f"--mcp-spool={spool_dir}",
        timeout=INNER_TIMEOUT,
    )
    assert result.ret == 0
    assert warning_lines(result) == []
    assert server.session(session_id_of(result)).outcomes_stored == 1


@pytest.mark.parametrize(
    "args, env, message",
    [
        ([], {"PYTEST_MCP": "maybe"}, "PYTEST_MCP='maybe'"),
        (["--mcp", "--mcp-timeout=-1"], {}, "--mcp-timeout: must not be negative"),
    ],
)
def test_bad_settings_are_usage_errors(pytester, monkeypatch, args, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=INNER_TIMEOUT)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


class RecordingRecorder:
    """A stand-in recorder that keeps the metadata of every call."""

    def __init__(self):
        self.metadata = []
        self.lock = threading.Lock()

    def _keep(self, name, context):
        with self.lock:
            self.metadata.append((name, dict(context.invocation_metadata())))

    def StartSession(self, request, context):
        self._keep("StartSession", context)
        return pb.StartSessionResponse(session=pb.Session(id=request.session_id))

    def StreamOutcomes(self, request_iterator, context):
        self._keep("StreamOutcomes", context)
        for request in request_iterator:
            yield pb.StreamOutcomesResponse(
                session_id=request.session_id, acked_seq=request.outcomes[-1].seq
            )

    def FinishSession(self, request, context):
        self._keep("FinishSession", context)
        return pb.FinishSessionResponse(session=pb.Session(id=request.session_id))


def test_the_token_is_sent_as_bearer_authorization_on_every_call(
    pytester, monkeypatch, spool_dir
):
    recorder = RecordingRecorder()
    fake = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    # Handlers by hand rather than the generated helper, which needs a newer grpcio.
    unary = grpc.unary_unary_rpc_method_handler
    methods = {
        "StartSession": unary(
            recorder.StartSession,
            request_deserializer=pb.StartSessionRequest.FromString,
            response_serializer=pb.StartSessionResponse.SerializeToString,
        ),
        "StreamOutcomes": grpc.stream_stream_rpc_method_handler(
            recorder.StreamOutcomes,
            request_deserializer=pb.StreamOutcomesRequest.FromString,
            response_serializer=pb.StreamOutcomesResponse.SerializeToString,
        ),
        "FinishSession": unary(
            recorder.FinishSession,
            request_deserializer=pb.FinishSessionRequest.FromString,
            response_serializer=pb.FinishSessionResponse.SerializeToString,
        ),
    }
    fake.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("pytest_mcp.v1.Recorder", methods),)
    )
    port = fake.add_insecure_port("127.0.0.1:0")
    fake.start()
    try:
        monkeypatch.setenv("PYTEST_MCP_TOKEN", "s3cret-token")
        pytester.makepyfile(test_one="def test_one():\n    pass\n")
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "--mcp", f"--mcp-address=127.0.0.1:{port}",
            f"--mcp-spool={spool_dir}", timeout=INNER_TIMEOUT,
        )
    finally:
        fake.stop(None)
    assert result.ret == 0
    assert [name for name, _ in recorder.metadata] == ["StartSession", "StreamOutcomes", "FinishSession"]
    for name, metadata in recorder.metadata:
        assert metadata.get("authorization") == "Bearer s3cret-token", name


def test_git_and_ci_are_part_of_the_environment(pytester, run_mcp, server, monkeypatch):
    def git(*args):
        subprocess.run(["git", *args], cwd=pytester.path, check=True, capture_output=True)

    git("init", "-q", "-b", "feature-x")
    git("-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "--allow-empty", "-m", "c")
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=pytester.path, capture_output=True, text=True, check=True
    ).stdout.strip()
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = run_mcp()
    assert result.ret == 0
    env = server.session(session_id_of(result)).environment
    assert (env.git_commit, env.git_branch, env.ci_provider) == (commit, "feature-x", "github-actions")
    assert env.HasField("git_dirty") and env.git_dirty is False  # untracked files do not count


def test_ci_provider_detection():
    assert _environment.ci_provider({"GITLAB_CI": "true", "CI": "true"}) == "gitlab-ci"
    assert _environment.ci_provider({"CI": "true"}) == "unknown"
    assert _environment.ci_provider({}) == ""
