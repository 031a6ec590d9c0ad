"""First-impression messages (issue 15 items 18, 19, 21): root causes once, next steps from the
stage states, errors in the per-run log. The real CLI in real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from voicelab.workspace import Workspace


def voicelab(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voicelab", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_train_without_vendor_reports_the_root_cause_once(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws", "xuan")
    env = {**os.environ, "VOICELAB_ROOT": str(tmp_path)}
    env.pop("VOICELAB_COSYVOICE_DIR", None)  # no vendor checkout anywhere
    r = voicelab("-w", str(ws.root), "train", "llm", env=env)
    assert r.returncode == 1
    err = r.stderr
    assert err.count("vendor sync cosyvoice") == 1, err
    # knock-on errors about a config that cannot exist without the vendor are not listed
    assert "train_conf" not in err and "max_frames_in_batch" not in err
    assert "use_spk_embedding" not in err
    # the missing base model is one problem, not one per file
    assert err.count("voicelab download cosyvoice3") == 1, err
    # item 19: the error is in the per-run log too
    logs = sorted((ws.root / "logs").glob("*-train.log"))
    assert logs and "training cannot start" in logs[-1].read_text("utf-8")


def test_say_with_nothing_trained_suggests_the_pipeline(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws", "xuan")
    r = voicelab("-w", str(ws.root), "say", "你好", "--out", str(tmp_path / "x.wav"))
    assert r.returncode == 1
    assert "voicelab run" in r.stderr and "voicelab export" not in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_a_command_that_logs_nothing_leaves_no_empty_log(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws", "xuan")
    assert voicelab("-w", str(ws.root), "status").returncode == 0
    logs = list((ws.root / "logs").glob("*.log")) if (ws.root / "logs").is_dir() else []
    assert all(p.stat().st_size > 0 for p in logs), [p.name for p in logs]
