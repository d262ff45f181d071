"""The committed gRPC stubs are exactly what proto/ generates, and import inside the package."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

PLUGIN = Path(__file__).resolve().parents[1]
COMMITTED = PLUGIN / "src" / "pytest_mcp" / "_proto"


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_stubs", PLUGIN / "scripts" / "gen_stubs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_what_the_proto_generates(tmp_path):
    generated = load_generator().generate(tmp_path)
    assert [p.name for p in generated] == ["recorder_pb2.py", "recorder_pb2_grpc.py"]
    for path in generated:
        committed = COMMITTED / path.name
        assert committed.read_text(encoding="utf-8") == path.read_text(encoding="utf-8"), (
            f"{committed} is out of date with proto/ (or grpcio-tools differs from the version "
            "pinned in python-plugin/requirements-test.txt): run python-plugin/scripts/gen_stubs.py"
        )


def test_stubs_import_relative_to_the_package():
    code = (
        "import importlib.util\n"
        "from pytest_mcp._proto import recorder_pb2_grpc\n"
        "assert importlib.util.find_spec('pytest_mcp.v1') is None\n"
        "assert recorder_pb2_grpc.pytest__mcp_dot_v1_dot_recorder__pb2.__name__ == 'pytest_mcp._proto.recorder_pb2'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
