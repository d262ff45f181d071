"""``python -m pytest_mcp ARGS``: runs the ``pytest-mcp`` binary this
distribution installed, so that an MCP client can be pointed at an
interpreter it knows (``python -m pytest_mcp stdio``)."""

from __future__ import annotations

import os
import subprocess
import sys

from ._binary import bundled


def main() -> int:
    binary = bundled()
    if binary is None:
        sys.stderr.write(
            "pytest-mcp: the pytest-mcp binary is not installed with this package "
            "(a source checkout without a build?); install it with `pip install ./python-plugin`\n"
        )
        return 2
    args = [binary, *sys.argv[1:]]
    if os.name == "nt":
        return subprocess.call(args)
    os.execv(binary, args)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
