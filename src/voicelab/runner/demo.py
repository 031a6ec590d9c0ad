"""``voicelab demo``: the real pipeline on a built-in speaker corpus.

The corpus (about a dozen English clips, a 2.5-minute recording with pauses, and a handful of
broken files that QC must explain) is generated with espeak-ng, so its transcripts are known.
``--tiny`` (the default without a GPU) trains a tiny randomly initialized CosyVoice 3 model that
VoiceLab builds from the vendor's own model classes, on the CPU, in a few minutes; ``--real``
downloads Fun-CosyVoice3-0.5B and runs a short fine-tune on the GPU. The voice a tiny model
speaks is noise: the demo proves the machinery, not the sound.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from voicelab.errors import WorkspaceError
from voicelab.fsutil import atomic_write_json, atomic_write_text
from voicelab.paths import to_local_path
from voicelab.runner.pipeline import TINY_MODEL_NAME, RunOptions
from voicelab.workspace import CONFIG_NAME, Workspace, find_root

log = logging.getLogger(__name__)

DEMO_SPEAKER = "demo"
DEMO_MARKER = ".voicelab/demo.json"  # what makes a workspace the demo's own
DEMO_SENTENCES = (
    "Hello, this is the VoiceLab demo voice.",
    "The quick brown fox jumps over the lazy dog.",
)


@dataclass
class DemoPlan:
    workspace: Workspace
    options: RunOptions
    tiny: bool
    asr: str


def has_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return shutil.which("nvidia-smi") is not None
    return bool(torch.cuda.is_available())


def default_workspace() -> Path:
    return find_root() / "workflows" / "demo"


def demo_root(workspace_arg: str | None, from_env: bool) -> Path:
    """The demo's workspace: ``-w DIR`` when given on the command line, else workflows/demo.
    ``VOICELAB_WORKSPACE`` names the user's voice, so the demo does not take it."""
    if workspace_arg and not from_env:
        return to_local_path(workspace_arg).resolve()
    return default_workspace().resolve()


def _is_demo_workspace(root: Path) -> bool:
    if (root / DEMO_MARKER).is_file():
        return True
    # Made by a VoiceLab from before the marker: the demo speaker reading the demo's corpus.
    try:
        ws = Workspace.open(root)
    except WorkspaceError:
        return False
    corpus = (root.parent / f"{root.name}-corpus").resolve()
    return ws.config.speaker == DEMO_SPEAKER and Path(ws.config.wav_dir).resolve() == corpus


def check_demo_root(root: Path) -> None:
    """Refuse a folder that is not the demo's: the demo re-initialises its workspace (speaker,
    device, epochs, base model), which would silently rewrite another voice's settings."""
    if root.exists() and not root.is_dir():
        raise WorkspaceError(f"{root} is a file, not a folder", "pass -w NEW_DIR for the demo")
    if not root.is_dir() or _is_demo_workspace(root):
        return
    if (root / CONFIG_NAME).is_file():
        speaker = Workspace.open(root).config.speaker or "?"
        raise WorkspaceError(
            f"{root} is the workspace of voice '{speaker}': the demo never writes into another "
            "voice's workspace",
            "leave -w out (the demo uses workflows/demo) or pass -w NEW_DIR",
        )
    if any(root.iterdir()):
        raise WorkspaceError(
            f"{root} holds other files: the demo needs a folder of its own",
            "leave -w out (the demo uses workflows/demo) or pass -w NEW_DIR",
        )


def plan_demo(
    workspace: Path | None = None,
    real: bool = False,
    tiny: bool | None = None,
    train_flow: bool | None = None,
    epochs: int | None = None,
) -> DemoPlan:
    """Build the corpus and the demo workspace; say how the pipeline will run on it."""
    from voicelab.testing.corpus import build_corpus

    tiny = (not real and not has_gpu()) if tiny is None else tiny
    root = (workspace or default_workspace()).resolve()
    check_demo_root(root)
    # Beside the workspace, not in it: prepare never reads audio from inside its own workspace.
    corpus = build_corpus(root.parent / f"{root.name}-corpus")
    whisper_dir = _whisper_dir()
    asr = "faster-whisper" if whisper_dir else "transcripts"
    prepare: dict[str, object] = {"asr": asr, "language": "en", "min_seconds": 1.0}
    if whisper_dir:
        prepare.update(whisper_model=str(whisper_dir), compute_type="int8")
    else:
        prepare["transcripts"] = str(_write_transcripts(root, corpus))
    train: dict[str, object] = {"epochs": epochs or (2 if tiny else 4)}
    if tiny:
        train.update(device="cpu", num_workers=1, gpus=1)
    sentences = root / "demo_sentences.txt"
    atomic_write_text(sentences, "\n".join(DEMO_SENTENCES) + "\n")
    ws = Workspace.init(
        root,
        DEMO_SPEAKER,
        str(corpus.root),
        {"prepare": prepare, "train": train, "audition": {"sentences": str(sentences)}},
    )
    if not (root / DEMO_MARKER).is_file():
        atomic_write_json(root / DEMO_MARKER, {"demo": True})
    if tiny:
        ws.set_option("model", "base_dir", str(ws.pretrained_dir / TINY_MODEL_NAME))
    elif ws.config.sections.get("model", {}).pop("base_dir", None):
        ws.save()
    flow = tiny if train_flow is None else train_flow
    opts = RunOptions(train_flow=flow, tiny=tiny, device="cpu" if tiny else "auto")
    return DemoPlan(ws, opts, tiny, asr)


def next_steps(root: Path) -> list[str]:
    """How to point the other commands at the demo's workspace (it is not the default one)."""
    return [
        f"the demo voice lives in {root}; to use it with other commands:",
        f'  voicelab -w "{root}" status        (or: export VOICELAB_WORKSPACE="{root}")',
        f'  voicelab -w "{root}" say "Hello there." --out hello.wav',
    ]


def _whisper_dir() -> Path | None:
    """The Whisper base model the registry packages ship (test extra), if installed."""
    if importlib.util.find_spec("faster_whisper") is None:
        return None
    try:
        from voicelab.testing.whisper import whisper_base_dir

        return whisper_base_dir()
    except Exception as e:  # no registry model: fall back to the known transcripts
        log.info("Whisper base model not available (%s): importing the corpus transcripts", e)
        return None


def _write_transcripts(root: Path, corpus: object) -> Path:
    """A file,text TSV of the corpus clips, beside (never inside) the source folder."""
    rows = ["file\ttext"]
    for clip in corpus.clips:  # type: ignore[attr-defined]
        if clip.text:
            rows.append(f"{clip.path}\t{clip.text}")
    path = root / "demo_transcripts.tsv"
    atomic_write_text(path, "\n".join(rows) + "\n")
    return path
