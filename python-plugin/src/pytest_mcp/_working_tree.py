"""``python -m pytest_mcp._working_tree``: the working tree's checksums, for
``pytest-mcp affected`` (the binary runs it in the project's Python).

Reads on stdin ``{"rootdir": DIR, "units": [[kind, path, name], ...],
"watch": [glob, ...]}`` and writes on stdout ``{"units": [[kind, path, name,
checksum], ...], "watched": {path: checksum}, "packages": digest}``, with
the same rules the plugin records dependencies by (an empty checksum: gone).
"""

from __future__ import annotations

import json
import sys

from ._affected import working_tree_now


def main() -> int:
    ask = json.load(sys.stdin)
    refs = [tuple(r) for r in ask.get("units", [])]
    answer = working_tree_now(ask["rootdir"], refs, ask.get("watch") or ())
    json.dump(answer, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
