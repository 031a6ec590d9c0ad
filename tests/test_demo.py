"""``voicelab demo`` owns its workspace and never touches another voice's (issue 15 item 3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from voicelab.errors import WorkspaceError
from voicelab.runner.demo import DEMO_MARKER, default_workspace, demo_root, next_steps, plan_demo
from voicelab.workspace import Workspace


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (None): a new empty logs/ is a change too."""
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in root.rglob("*")
    }


@pytest.fixture
def real_voice(tmp_path: Path) -> Workspace:
    ws = Workspace.init(tmp_path / "xuan", "xuan", str(tmp_path / "recordings"))
    ws.set_option("train", "epochs", 40)
    ws.set_option("model", "base_dir", str(tmp_path / "Fun-CosyVoice3-0.5B"))
    return ws


def test_plan_demo_refuses_another_voices_workspace(real_voice: Workspace) -> None:
    before = _snapshot(real_voice.root)
    with pytest.raises(WorkspaceError, match="workspace of voice 'xuan'"):
        plan_demo(real_voice.root, tiny=True)
    assert _snapshot(real_voice.root) == before
    stray = real_voice.root.parent / "not-a-workspace"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with pytest.raises(WorkspaceError, match="folder of its own"):
        plan_demo(stray, tiny=True)


def test_cli_demo_with_w_on_a_voice_changes_nothing(real_voice: Workspace) -> None:
    before = _snapshot(real_voice.root)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("VOICELAB_WORKSPACE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "voicelab", "-w", str(real_voice.root), "demo", "--tiny"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "never writes into another voice" in proc.stderr
    assert _snapshot(real_voice.root) == before  # not its toml, not a log file


def test_voicelab_workspace_env_is_the_users_voice_not_the_demos(tmp_path: Path) -> None:
    assert demo_root(str(tmp_path / "xuan"), from_env=True) == default_workspace().resolve()
    assert demo_root(str(tmp_path / "mine"), from_env=False) == (tmp_path / "mine").resolve()
    assert demo_root(None, from_env=False) == default_workspace().resolve()


def test_demo_workspace_is_marked_and_reused(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    plan = plan_demo(root, tiny=True)
    assert (root / DEMO_MARKER).is_file() and plan.workspace.config.speaker == "demo"
    plan_demo(root, tiny=True)  # its own workspace: a second run is welcome
    lines = "\n".join(next_steps(root))
    assert f'-w "{root}" status' in lines and "VOICELAB_WORKSPACE" in lines
