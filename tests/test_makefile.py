"""`make start`'s first step, as a newcomer meets it: `make install` in a fresh copy."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*_cache", ".hypothesis", "build", "dist", "*.egg-info"
)


@pytest.mark.timeout(900)
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_install_is_quiet_and_installs_the_checkout(tmp_path: Path) -> None:
    """1. A fresh copy of the checkout, no virtualenv yet.
    2. `make install` says what it sets up and nothing from setuptools about
       editable installs; the installed agentd is the copy's own code."""
    copy = tmp_path / "checkout"
    shutil.copytree(REPO, copy, ignore=NOT_COPIED)
    # As a newcomer's shell: no PYTHONPATH pointing at another checkout, no warning filters.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONWARNINGS")}
    try:
        result = run(["make", "install"], copy, env, timeout=840)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "Editable install" not in output and "BuildBackendWarning" not in output, output
        python = str(copy / ".venv" / "bin" / "python")
        imported = run([python, "-c", "import agentd; print(agentd.__file__)"], tmp_path, env)
        assert Path(imported.stdout.strip()).is_relative_to(copy), imported.stdout
    finally:
        shutil.rmtree(copy, ignore_errors=True)  # a virtualenv is ~200 MB: not kept for later


def run(
    argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
