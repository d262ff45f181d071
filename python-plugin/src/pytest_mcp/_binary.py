"""Where the ``pytest-mcp`` binary of this installation is, and where it keeps
its default database.

The wheel installs the binary into the scripts directory of the environment
it is installed in (next to ``pytest``), so it is looked for there, never on
an arbitrary ``PATH``: the plugin and the binary it runs come from one
distribution and one version.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path
from typing import List, Optional

NAME = "pytest-mcp" + (".exe" if os.name == "nt" else "")


def _scripts_dirs() -> List[Path]:
    dirs: List[Path] = []
    for scheme in (None, f"{os.name}_user"):
        try:
            path = sysconfig.get_path("scripts") if scheme is None else sysconfig.get_path("scripts", scheme)
        except KeyError:
            continue
        if path:
            dirs.append(Path(path))
    # A virtual environment's interpreter sits in its scripts directory.
    dirs.append(Path(sys.executable).parent)
    return dirs


def bundled() -> Optional[str]:
    """The path of the installed ``pytest-mcp`` binary, if there is one."""
    for directory in _scripts_dirs():
        candidate = directory / NAME
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def default_database() -> Path:
    """The binary's default database (``--db`` unset): ``pytest-mcp/pytest-mcp.db``
    in the per-user data directory, as the binary computes it."""
    override = os.environ.get("PYTEST_MCP_DB")
    if override:
        return Path(override)
    home = Path.home()
    if sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    elif os.name == "nt":
        base = Path(os.environ.get("APPDATA") or home / "AppData" / "Roaming")
    else:
        xdg = os.environ.get("XDG_DATA_HOME")
        base = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".local" / "share"
    return base / "pytest-mcp" / "pytest-mcp.db"


def shown(path: Path) -> str:
    """``path`` with the home directory written as ``~``."""
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)
