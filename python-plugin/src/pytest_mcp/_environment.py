"""The Environment of a session: the machine, the project and the run.

``from_config`` reads what pytest knows (cheap, on the main thread);
``complete`` adds what needs a subprocess or a file read (git, the code state,
pyproject.toml; with dependencies, the watched files' checksums and the
installed distributions' digest) and runs on the background thread, so the
run never waits for git.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import __version__
from ._code_state import code_state

GIT_TIMEOUT = 2.0

# Bounds that keep a StartSession far below the server's 256 KiB environment limit.
MAX_ARGS = 200
MAX_ARG_CHARS = 4096
MAX_ARGS_TOTAL = 64 * 1024

# Checked in order; the first variable that is set names the provider.
_CI_VARIABLES = (
    ("GITHUB_ACTIONS", "github-actions"),
    ("GITLAB_CI", "gitlab-ci"),
    ("CIRCLECI", "circleci"),
    ("TRAVIS", "travis"),
    ("BUILDKITE", "buildkite"),
    ("TF_BUILD", "azure-pipelines"),
    ("JENKINS_URL", "jenkins"),
    ("TEAMCITY_VERSION", "teamcity"),
    ("APPVEYOR", "appveyor"),
    ("BITBUCKET_BUILD_NUMBER", "bitbucket-pipelines"),
    ("CODEBUILD_BUILD_ID", "aws-codebuild"),
    ("DRONE", "drone"),
    ("WOODPECKER_CI", "woodpecker"),
    ("SEMAPHORE", "semaphore"),
)


def ci_provider(environ: Optional[Dict[str, str]] = None) -> str:
    """The CI provider named by the environment, "unknown" for a bare CI=true, else ""."""
    env = os.environ if environ is None else environ
    for variable, name in _CI_VARIABLES:
        if env.get(variable):
            return name
    if env.get("CI", "").strip().lower() in ("1", "true", "yes"):
        return "unknown"
    return ""


def _bounded_args(args) -> List[str]:
    out: List[str] = []
    total = 0
    for arg in list(args)[:MAX_ARGS]:
        text = str(arg)
        if len(text) > MAX_ARG_CHARS:
            text = text[:MAX_ARG_CHARS] + "...[pytest-mcp: truncated]"
        total += len(text)
        if total > MAX_ARGS_TOTAL:
            out.append("...[pytest-mcp: more arguments left out]")
            break
        out.append(text)
    else:
        if len(args) > MAX_ARGS:
            out.append(f"...[pytest-mcp: {len(args) - MAX_ARGS} more arguments left out]")
    return out


def _plugins(config) -> List[str]:
    names: List[str] = []
    try:
        for _plugin, dist in config.pluginmanager.list_plugin_distinfo():
            name = getattr(dist, "project_name", None) or dist.metadata["name"]
            if name.startswith("pytest-"):
                name = name[len("pytest-") :]
            entry = f"{name}-{dist.version}"
            if entry not in names:
                names.append(entry)
    except Exception:  # plugin metadata is best effort, never a reason to fail
        pass
    return names


def _xdist_workers(config) -> int:
    option = config.option
    if getattr(option, "dist", "no") == "no":
        return 0
    return len(getattr(option, "tx", None) or [])


def from_config(config) -> Dict[str, Any]:
    """The fields pytest's config knows, as an Environment-shaped dict."""
    import pytest

    return {
        "pytest_version": pytest.__version__,
        "plugins": _plugins(config),
        "rootdir": str(config.rootpath),
        "invocation_args": _bounded_args(config.invocation_params.args),
        "xdist_workers": _xdist_workers(config),
        "extra": {"plugin_version": __version__},
    }


def _git(root: str, *args: str) -> Optional[str]:
    try:
        done = subprocess.run(
            ["git", "-C", root, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout


def git_info(root: str) -> Dict[str, Any]:
    """Commit, branch and dirtiness of the checkout holding root; empty outside git."""
    info: Dict[str, Any] = {}
    out = _git(root, "rev-parse", "HEAD", "--abbrev-ref", "HEAD")
    if out is None:
        return info
    lines = out.split()
    if lines:
        info["git_commit"] = lines[0]
    if len(lines) > 1 and lines[1] != "HEAD":  # "HEAD" means detached
        info["git_branch"] = lines[1]
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    if status is not None:
        info["git_dirty"] = bool(status.strip())
    return info


_NAME_LINE = re.compile(r"""^\s*name\s*=\s*["']([^"']+)["']""")


def project_name(root: str) -> str:
    """[project].name (or [tool.poetry].name) from root's pyproject.toml, else root's base name."""
    path = Path(root) / "pyproject.toml"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""
    if text:
        # A line scan rather than a TOML parser: tomllib is 3.11+ and a name
        # is a plain string in every pyproject.toml worth reading.
        section = ""
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith("["):
                section = stripped
                continue
            if section in ("[project]", "[tool.poetry]"):
                match = _NAME_LINE.match(line)
                if match:
                    return match.group(1)
    return Path(root).name


def complete(base: Dict[str, Any], deps: bool = False) -> Dict[str, Any]:
    """base plus the machine, the project name, git, the code state and CI, and with
    ``deps`` the watched files and the packages digest; may take a moment (subprocesses)."""
    env = dict(base)
    root = env.get("rootdir") or os.getcwd()
    env["os"] = platform.platform()
    env["python_version"] = platform.python_version()
    env["python_implementation"] = platform.python_implementation()
    try:
        env["hostname"] = socket.gethostname()
    except OSError:
        env["hostname"] = ""
    env["project"] = project_name(root)
    env.update(git_info(root))
    env["code_state"] = code_state(root)
    env["ci_provider"] = ci_provider()
    if deps:
        _add_watched(env, root)
    return env


def _add_watched(env: Dict[str, Any], root: str) -> None:
    """watched_files and packages (``_deps``); a failure leaves them out (empty:
    not known), as it must not cost the run its results."""
    from . import _deps

    try:
        watched, cut = _deps.bounded_watched(_deps.watched_now(root))
        env["watched_files"] = watched
        if cut:
            env.setdefault("extra", {})
            env["extra"] = dict(env["extra"], watched_files_cut=str(cut))
    except Exception:  # best effort, never a reason to lose the run
        pass
    try:
        env["packages"] = _deps.packages_digest()
    except Exception:
        pass
