"""The voices a server speaks with: the workspace's exported voices, grouped by base model.

A voice is a folder ``voicelab export`` wrote under ``pretrained_models`` (it holds
``voicelab.json``). Its name is the folder's name; its speaker's name (``voicelab.json``
``speaker``) is accepted too where no two voices share it. Voices exported from the same base
model (same ``base_model.id``) differ only in ``llm.pt``, ``flow.pt`` and the speaker embedding,
so they share one loaded model (:mod:`voicelab.serve.engine`). Listing reads JSON only: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicelab.errors import ConfigError, WorkspaceError
from voicelab.fsutil import read_json
from voicelab.stages.synth import PROVENANCE


@dataclass(frozen=True)
class Voice:
    name: str  # the voice folder's name
    speaker: str  # its speaker in spk2info.pt
    model_dir: Path
    base: str  # the base model's name
    base_key: str  # voices with the same key share one loaded model
    provenance: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/voices`` says about the voice (no paths of the machine)."""
        prov = self.provenance
        llm = prov.get("llm") if isinstance(prov.get("llm"), dict) else {}
        flow = prov.get("flow") if isinstance(prov.get("flow"), dict) else {}
        ckpts = [c.get("file") for c in llm.get("checkpoints") or [] if isinstance(c, dict)]
        return {
            "id": self.name,
            "object": "voice",
            "speaker": self.speaker,
            "base": self.base,
            "model": self.base,
            "created": prov.get("created"),
            "voicelab_version": prov.get("voicelab_version"),
            "llm": {"rule": llm.get("rule"), "checkpoints": ckpts},
            "flow": "base" if flow.get("base") else flow.get("rule"),
        }


def _base_of(prov: dict[str, Any], folder: Path) -> tuple[str, str]:
    base = prov.get("base_model") or prov.get("base")
    if isinstance(base, dict):
        name = str(base.get("name") or Path(str(base.get("path") or "base")).name)
        return name, str(base.get("id") or name)
    if isinstance(base, str) and base:
        return Path(base).name, Path(base).name
    return folder.name, folder.name  # unknown base: a model of its own


def read_voice(folder: Path) -> Voice | None:
    """The voice in ``folder``, or None when it is not an exported voice."""
    prov = read_json(folder / PROVENANCE, default=None)
    if not isinstance(prov, dict) or not (folder / "spk2info.pt").is_file():
        return None
    speaker = prov.get("speaker")
    if not isinstance(speaker, str) or not speaker:
        return None
    base, key = _base_of(prov, folder)
    return Voice(folder.name, speaker, folder, base, key, prov)


def find_voices(pretrained_dir: Path, wanted: list[str] | tuple[str, ...] = ()) -> list[Voice]:
    """Exported voices under ``pretrained_dir`` (only ``wanted`` ones when given)."""
    folders = (
        sorted(p for p in pretrained_dir.iterdir() if p.is_dir()) if pretrained_dir.is_dir() else []
    )
    voices = [v for v in (read_voice(p) for p in folders) if v is not None]
    if not voices:
        raise WorkspaceError(
            f"no exported voice under {pretrained_dir}",
            "train and export one first: voicelab export (or pass --workspace DIR)",
        )
    if not wanted:
        return voices
    table = VoiceTable(voices)
    return list(dict.fromkeys(table.get_or_raise(name) for name in wanted))


class VoiceTable:
    """Look up a voice by folder name or (unambiguous) speaker name."""

    def __init__(self, voices: list[Voice]) -> None:
        self.voices = list(voices)
        self._by_name = {v.name: v for v in voices}
        speakers: dict[str, list[Voice]] = {}
        for v in voices:
            speakers.setdefault(v.speaker, []).append(v)
        for spk, vs in speakers.items():
            if len(vs) == 1 and spk not in self._by_name:
                self._by_name[spk] = vs[0]

    def names(self) -> list[str]:
        return [v.name for v in self.voices]

    def get(self, name: str) -> Voice | None:
        return self._by_name.get(name)

    def get_or_raise(self, name: str) -> Voice:
        voice = self.get(name)
        if voice is None:
            raise ConfigError(f"unknown voice {name!r}", f"voices here: {', '.join(self.names())}")
        return voice

    def groups(self) -> dict[str, list[Voice]]:
        """Voices by base key: one loaded model per group."""
        out: dict[str, list[Voice]] = {}
        for v in self.voices:
            out.setdefault(v.base_key, []).append(v)
        return out
