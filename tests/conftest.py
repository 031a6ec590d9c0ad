"""Shared fixtures and the ``vendor`` marker's skip rule."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from voicelab.errors import VoiceLabError
from voicelab.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("VOICELAB_TEST_CACHE", REPO / ".cache" / "test-fixtures"))
os.environ.setdefault("VOICELAB_TEST_CACHE", str(CACHE))


def vendor_unavailable_reason() -> str | None:
    """Why vendor-marked tests cannot run here, or None when they can."""
    try:
        from voicelab.vendor import cosyvoice_runtime
    except ImportError:
        return "voicelab.vendor is not available"
    try:
        cosyvoice_runtime()
    except VoiceLabError as e:
        return f"no usable upstream CosyVoice checkout: {e.one_line()}"
    for mod in ("torchaudio", "hyperpyyaml", "transformers", "whisper"):
        if importlib.util.find_spec(mod) is None:
            return f"the train extra is not installed ({mod} missing): pip install -e '.[train]'"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any(item.get_closest_marker("vendor") for item in items):
        return
    reason = vendor_unavailable_reason()
    if reason:
        skip = pytest.mark.skip(reason=f"vendor test skipped: {reason}")
        for item in items:
            if item.get_closest_marker("vendor"):
                item.add_marker(skip)


@pytest.fixture
def tmp_workspace(tmp_path: Path) -> Workspace:
    """A fresh workspace for speaker ``spk1`` with no source folder."""
    return Workspace.init(tmp_path / "ws", "spk1")


@pytest.fixture(scope="session")
def speech_set() -> dict[str, list]:
    """The espeak-ng speech set (``speech_corpus``), built once into the test cache."""
    from speech_corpus import SPEECH_CACHE, build_speech_set

    cache = Path(os.environ["VOICELAB_TEST_CACHE"])
    cache.mkdir(parents=True, exist_ok=True)
    return build_speech_set(cache / SPEECH_CACHE)


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny ONNX stand-ins for the feature models."""
    from voicelab.testing import tiny_onnx

    d = tmp_path_factory.mktemp("onnx")
    tiny_onnx.write_all(d)
    return d
