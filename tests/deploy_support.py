"""Helpers for the offline checks of deploy/: the tools, YAML, and where things are."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
K8S_DIR = DEPLOY / "kubernetes"
COMPOSE_DIR = DEPLOY / "compose"
SYSTEMD_UNIT = DEPLOY / "systemd" / "snapshotd.service"
SOCKET = "/run/snapshotd/snapshotd.sock"
IN_CI = os.environ.get("CI") == "true"


def missing(what: str, how: str, *, required_in_ci: bool) -> None:
    if IN_CI and required_in_ci:
        pytest.fail(f"{what} is missing in CI: {how}")
    pytest.skip(f"{what} is not installed ({how})")


def tool(name: str, how: str, *, required_in_ci: bool) -> str:
    """The tool from the virtualenv's bin (pip-installed tools) or else from PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        missing(name, how, required_in_ci=required_in_ci)
    assert found is not None
    return found


def module(name: str) -> ModuleType:
    try:
        return __import__(name)
    except ImportError:
        missing(f"Python module {name}", "make install", required_in_ci=True)
        raise


def run(argv: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    yaml = module("yaml")
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
