#!/usr/bin/env python3
"""Regenerates the committed gRPC stubs in src/pytest_mcp/_proto/ from ../proto.

Usage: python scripts/gen_stubs.py [OUTPUT_DIR]   (needs grpcio-tools)

Two edits make the generated code fit a package that supports a range of
grpcio / protobuf versions:

* the service module imports its messages relatively (``from . import
  recorder_pb2``) instead of as the top-level ``pytest_mcp.v1`` package that
  protoc derives from the proto path, which does not exist here;
* the runtime version pins that protoc writes (protobuf's
  ``ValidateProtobufRuntimeVersion`` and grpc's ``GRPC_GENERATED_VERSION``
  check) are dropped: they demand a runtime at least as new as the generator,
  which would tie the plugin to the newest grpcio and Python 3.10+. The floors
  in pyproject.toml are the tested minimum instead.

tests/test_stubs.py runs this into a temporary directory and fails when the
result differs from what is committed.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLUGIN = HERE.parent
PROTO_ROOT = PLUGIN.parent / "proto"
PROTO_FILE = "pytest_mcp/v1/recorder.proto"
DEFAULT_OUT = PLUGIN / "src" / "pytest_mcp" / "_proto"
GENERATED = ("recorder_pb2.py", "recorder_pb2_grpc.py")


def _drop_protobuf_pin(text: str) -> str:
    text = text.replace(
        "from google.protobuf import runtime_version as _runtime_version\n", ""
    )
    return re.sub(
        r"_runtime_version\.ValidateProtobufRuntimeVersion\(\n(?:[^\n]*\n)*?\)\n",
        "",
        text,
    )


def _drop_grpc_pin(text: str) -> str:
    return re.sub(
        r"\nGRPC_GENERATED_VERSION = .*?\n    \)\n",
        "\n",
        text,
        flags=re.DOTALL,
    )


def _relative_import(text: str) -> str:
    return text.replace(
        "from pytest_mcp.v1 import recorder_pb2 as", "from . import recorder_pb2 as"
    )


def generate(out_dir: Path) -> list[Path]:
    """Writes the post-processed stubs into out_dir and returns their paths."""
    from grpc_tools import protoc

    try:
        from importlib.resources import files

        well_known = str(files("grpc_tools") / "_proto")
    except (ImportError, TypeError):  # Python 3.8 or an unusual install
        import grpc_tools

        well_known = str(Path(grpc_tools.__file__).parent / "_proto")

    with tempfile.TemporaryDirectory() as raw:
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTO_ROOT}",
                f"-I{well_known}",
                f"--python_out={raw}",
                f"--grpc_python_out={raw}",
                str(PROTO_ROOT / PROTO_FILE),
            ]
        )
        if status != 0:
            raise SystemExit(f"protoc failed with status {status}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            text = (Path(raw) / "pytest_mcp" / "v1" / name).read_text(encoding="utf-8")
            if name == "recorder_pb2.py":
                text = _drop_protobuf_pin(text)
                if "_runtime_version" in text:
                    raise SystemExit(f"{name}: could not remove the protobuf version pin")
            else:
                text = _relative_import(_drop_grpc_pin(text))
                if "GRPC_GENERATED_VERSION" in text or "pytest_mcp.v1 import" in text:
                    raise SystemExit(f"{name}: post-processing did not apply")
            target = out_dir / name
            target.write_text(text, encoding="utf-8")
            written.append(target)
        return written


def main(argv: list[str]) -> int:
    out_dir = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUT
    for path in generate(out_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
