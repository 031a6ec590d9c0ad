"""``voicelab demo --tiny`` end to end with the upstream vendor, then again (all skipped)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vendor, pytest.mark.slow]


def _demo(ws: Path) -> tuple[str, float]:
    env = {**os.environ, "VOICELAB_NO_PROGRESS": "1"}
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "voicelab", "-w", str(ws), "demo", "--tiny"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout, time.time() - t0


def test_demo_tiny_twice(tmp_path: Path) -> None:
    ws = tmp_path / "演示_demo"  # non-ASCII; spaces are refused (kaldi lists split at blanks)
    first, wall = _demo(ws)
    print(f"demo --tiny first run: {wall:.0f} s")
    for stage in ("prepare", "features", "pack", "train_llm", "train_flow", "export", "audition"):
        assert f"[done] {stage}" in first
    voice = ws / "pretrained_models" / "Fun-CosyVoice3-0.5B-demo-sft"
    assert (voice / "spk2info.pt").is_file() and (voice / "llm.pt").is_file()
    assert (ws / "reports" / "index.html").is_file()
    assert list((ws / "reports").glob("audition-*/index.html"))
    second, wall2 = _demo(ws)
    print(f"demo --tiny second run: {wall2:.0f} s")
    assert "[run" not in second
    assert second.count("[skip]") == 9
