"""Every example in README.md and docs/ is paste-able.

The shell examples that talk to the socket run, as written, through ``bash``
against a real daemon listening on ``./snapshotd.sock``; their ``# {...}``
comments are the expected responses (``…`` stands for anything), in order, and
a response with an error must be one the docs show. The Python examples run
too (with the run ``order-42`` the examples before them create), and every
``json`` block holds one JSON object per line.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.e2e.daemon import DaemonProcess, default_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SOCKET_DOCS = [ROOT / "README.md", ROOT / "docs" / "protocol.md"]


def blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), re.M | re.S)


def socket_script(path: Path) -> str:
    """The document's shell blocks that use the socket, in order (later ones use
    the ``call`` helper an earlier one defines)."""
    return "\n".join(b for b in blocks(path, "sh") if "socat" in b or re.search(r"^call ", b, re.M))


def expected_responses(script: str) -> list[re.Pattern[str]]:
    """The ``# {...}`` comments (``#   ...`` lines continue one), as patterns."""
    comments: list[str] = []
    for line in script.splitlines():
        if line.startswith("# {"):
            comments.append(line[2:])
        elif line.startswith("#   ") and comments:
            comments[-1] += line[1:].strip()
    return [
        re.compile(re.escape(c).replace("…", ".*?").replace(r"\.\.\.", ".*?") + "$")
        for c in comments
    ]


@pytest.fixture
def daemon() -> Iterator[DaemonProcess]:
    root = Path(tempfile.mkdtemp(prefix="sd-docs-"))
    config = default_config(root).replace(str(root / "s.sock"), str(root / "snapshotd.sock"))
    config = config.replace("snapshot_threshold = 10\n", "")  # the documented default
    process = DaemonProcess(root, config)
    process.socket_path = str(root / "snapshotd.sock")
    process.start()
    try:
        yield process
    finally:
        process.stop()
        process.cleanup()


def test_the_socket_examples_are_found() -> None:
    for path in SOCKET_DOCS:
        assert expected_responses(socket_script(path)), path


@pytest.mark.parametrize("path", SOCKET_DOCS, ids=lambda p: p.name)
def test_socket_examples_run_as_written(daemon: DaemonProcess, path: Path) -> None:
    for tool in ("socat", "jq"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is needed to run the documented examples (apt-get install {tool})")
    script = socket_script(path)
    result = subprocess.run(
        ["bash", "-eu", "-o", "pipefail", "-c", script],
        cwd=daemon.root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    responses = result.stdout.splitlines()
    assert all(isinstance(orjson.loads(line), dict) for line in responses), responses
    expected = expected_responses(script)
    matched: set[int] = set()
    position = 0
    for pattern in expected:
        while position < len(responses) and not pattern.match(responses[position]):
            position += 1
        assert position < len(responses), f"no response matches {pattern.pattern}:\n{responses}"
        matched.add(position)
        position += 1
    failures = [r for i, r in enumerate(responses) if i not in matched and '"ok":false' in r]
    assert not failures, f"{path.name}: undocumented errors: {failures}"


@pytest.mark.parametrize(
    "code",
    [code for path in DOCS for code in blocks(path, "python")],
    ids=lambda code: code.splitlines()[0][:40],
)
def test_python_examples_run(daemon: DaemonProcess, code: str) -> None:
    with daemon.client() as client:  # the run the examples before this one created
        client.call("create_run", run="order-42", workflow="order", version="v1")
        client.call("append", run="order-42", events=[{"type": "paid", "data": {"amount": 12}}])
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=daemon.root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_json_examples_are_one_object_per_line(path: Path) -> None:
    for block in blocks(path, "json"):
        for line in block.splitlines():
            if line.strip():
                assert isinstance(orjson.loads(line), dict), line
