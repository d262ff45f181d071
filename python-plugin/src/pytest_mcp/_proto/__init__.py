"""Stubs generated from proto/pytest_mcp/v1/recorder.proto by scripts/gen_stubs.py; do not edit."""
