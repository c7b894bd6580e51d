"""The systemd lab finds its tools in the sbin directories when PATH lacks them."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.systemd_lab import SystemdLab, lab_unavailable_reason

pytestmark = pytest.mark.systemd

PATH_WITHOUT_SBIN = "/usr/bin:/bin"


def test_the_lab_boots_when_path_has_no_sbin(monkeypatch: pytest.MonkeyPatch) -> None:
    """1. PATH is /usr/bin:/bin (sudo, IDEs and CI runners often give no sbin).
    2. The lab still boots: pivot_root and mount are found in /usr/sbin, /sbin."""
    if shutil.which("pivot_root", path=PATH_WITHOUT_SBIN) is not None:
        pytest.skip("pivot_root is on /usr/bin:/bin here: nothing to prove")
    monkeypatch.setenv("PATH", PATH_WITHOUT_SBIN)
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with SystemdLab() as lab:
        assert lab.pid is not None
        assert lab.systemctl("is-system-running").stdout.strip() in ("running", "degraded")
    assert os.environ["PATH"] == PATH_WITHOUT_SBIN  # the lab did not change the caller's PATH
