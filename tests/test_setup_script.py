"""scripts/setup.sh (issue 15 item 26): apt waits for a held lock, and a system Python without
ensurepip gets its python3.X-venv. apt-get, sudo and ldconfig are stand-ins on PATH that record
their calls (this machine's apt is not ours to run); the script itself runs for real."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_apt_lock_timeout_and_python_venv(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "apt-calls"
    _exe(bin_dir / "apt-get", f'#!/bin/sh\necho "$*" >> {calls}\n')
    _exe(bin_dir / "sudo", '#!/bin/sh\nexec "$@"\n')
    _exe(bin_dir / "ldconfig", "#!/bin/sh\nexit 0\n")  # "libsndfile is not installed"
    # a system Python like Debian's: no ensurepip; `-m venv` ends the run here (exit 7)
    _exe(
        bin_dir / "python3",
        "#!/bin/sh\n"
        'case "$*" in *ensurepip*) exit 1 ;; *"-m venv"*) exit 7 ;; esac\n'
        f'exec {sys.executable} "$@"\n',
    )
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHON", None)
    r = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "setup.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 7, r.stdout + r.stderr
    lines = calls.read_text().splitlines()
    assert lines, "apt-get was never called"
    assert all(ln.startswith("-o DPkg::Lock::Timeout=") for ln in lines), lines
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert any(f"install -y -qq python{ver}-venv" in ln for ln in lines), lines
    assert sum(" update " in f" {ln} " for ln in lines) == 1, lines  # one update is enough
