"""The voice workspace: one folder per voice project, and every path inside it.

Layout (as in the user's notes)::

    <workspace>/voicelab.toml            speaker id, source folder, chosen options
    <workspace>/data/<spk>_sft/           prepare/ (clips, caches, QC), train/, dev/ (kaldi dirs)
    <workspace>/configs/                  generated training YAML
    <workspace>/exp/<spk>_sft/<model>/voicelab     (torch_ddp | deepspeed: upstream's trainer)
    <workspace>/tensorboard/<spk>_sft/<model>/voicelab
    <workspace>/pretrained_models/        base model and exported voices
    <workspace>/reports/  logs/  .voicelab/state/

No stage joins workspace paths itself: they all come from :class:`Workspace`.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from voicelab import config
from voicelab.errors import ConfigError, InputError, WorkspaceError
from voicelab.fsutil import atomic_write_text
from voicelab.paths import has_whitespace, to_local_path

#: Run dir names under ``exp/<tag>/<model>/``: VoiceLab's trainer, then upstream's engines.
RUN_NAMES = ("voicelab", "torch_ddp", "deepspeed")
#: ``voicelab train --trainer`` when neither the command line nor voicelab.toml names one.
DEFAULT_TRAINER = "voicelab"

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_NAME = "voicelab.toml"
MANIFEST_NAME = "vendors.toml"
BASE_MODEL_NAME = "Fun-CosyVoice3-0.5B"
DEFAULT_INSTRUCT = "You are a helpful assistant.<|endofprompt|>"
_SPEAKER_RE = re.compile(r"^[A-Za-z0-9\u4e00-\u9fff][\w\u4e00-\u9fff-]{0,63}$")


def find_root(start: Path | None = None) -> Path:
    """The VoiceLab root: ``VOICELAB_ROOT``, else the nearest folder above ``start`` (the current
    folder) holding ``vendors.toml``, else the source checkout this package runs from, else the
    current folder."""
    env = os.environ.get("VOICELAB_ROOT")
    if env:
        return to_local_path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for p in (here, *here.parents):
        if (p / MANIFEST_NAME).is_file():
            return p
    src = Path(__file__).resolve().parents[2]
    if (src / MANIFEST_NAME).is_file():
        return src
    return here


def user_config_path() -> Path:
    """User-level settings (mirrors, download source) shared by every workspace."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(os.environ.get("VOICELAB_CONFIG", Path(base) / "voicelab" / "config.toml"))


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}", "fix the file or delete it") from e


def load_user_config() -> dict[str, Any]:
    return load_toml(user_config_path())


def save_user_config(data: dict[str, Any]) -> Path:
    path = user_config_path()
    atomic_write_text(path, tomli_w.dumps(_drop_none(data)))
    return path


def _drop_none(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    return d


def check_source_dir(wav_dir: str | os.PathLike[str]) -> Path:
    """The recordings folder a user named, refused at once when it is not there."""
    src = to_local_path(wav_dir)
    if not src.is_dir():
        raise InputError(
            f"the recordings folder {src} does not exist or is not a folder",
            'pass the folder that holds the audio files: --wav-dir "DIR"',
        )
    return src


def check_workspace_path(root: Path) -> Path:
    """Decided once, when a workspace is created (init, run): upstream's kaldi readers split
    paths at blanks, so prepare would refuse a workspace whose path has any."""
    if has_whitespace(str(root)):
        raise ConfigError(
            f"the workspace path has whitespace: {root}",
            "choose a workspace folder without spaces (--workspace DIR)",
        )
    return root


def check_speaker_id(speaker: str) -> str:
    if not _SPEAKER_RE.match(speaker or ""):
        raise ConfigError(
            f"speaker id {speaker!r} is not usable as a file and kaldi name",
            "use letters, digits, Chinese characters, '_' or '-', no spaces, e.g. --speaker xuan",
        )
    return speaker


@dataclass
class VoiceConfig:
    """What ``voicelab.toml`` holds. Sections (``[prepare]``, ``[train]`` ...) hold each stage's
    chosen options; command-line flags override them for one run."""

    speaker: str = ""
    wav_dir: str = ""
    locked_epoch: int | None = None
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        """A copy of ``[name]`` (``prepare.qc`` for ``[prepare.qc]``)."""
        return dict(self.sections.get(name, {}))

    def to_toml(self) -> dict[str, Any]:
        voice: dict[str, Any] = {"speaker": self.speaker, "wav_dir": self.wav_dir}
        if self.locked_epoch is not None:
            voice["locked_epoch"] = self.locked_epoch
        return {"voice": voice, **config.to_toml(self.sections)}

    @classmethod
    def from_toml(cls, data: dict[str, Any], path: Path | str = CONFIG_NAME) -> VoiceConfig:
        """Typed and checked (voicelab.config): an unknown section or key, or a bad value, is a
        one-line ConfigError naming the file and the key."""
        sections = config.validate(data, path)
        voice = sections.pop("voice", {})
        locked = voice.get("locked_epoch")
        return cls(
            speaker=str(voice.get("speaker", "")),
            wav_dir=str(voice.get("wav_dir", "")),
            locked_epoch=int(locked) if locked is not None else None,
            sections=sections,
        )


@dataclass
class Workspace:
    """A voice project folder and every path in it."""

    root: Path
    config: VoiceConfig = field(default_factory=VoiceConfig)

    # ---- construction ---------------------------------------------------------------------
    @staticmethod
    def default_root(voicelab_root: Path | None = None) -> Path:
        env = os.environ.get("VOICELAB_WORKSPACE")
        if env:
            return to_local_path(env).resolve()
        return (voicelab_root or find_root()) / "workflows" / "cosyvoice"

    @classmethod
    def open(cls, root: str | os.PathLike[str] | None = None, must_exist: bool = True) -> Workspace:
        """Open the workspace at ``root`` (``--workspace``), ``VOICELAB_WORKSPACE`` or the
        default ``workflows/cosyvoice`` under the VoiceLab root."""
        path = to_local_path(root).resolve() if root else cls.default_root()
        if path.exists() and not path.is_dir():
            raise WorkspaceError(
                f"{path} is a file, not a workspace folder", "pass a folder to --workspace"
            )
        cfg_file = path / CONFIG_NAME
        if not cfg_file.is_file():
            if must_exist:
                raise WorkspaceError(
                    f"no voice workspace at {path}",
                    'create one with: voicelab init --speaker NAME --wav-dir "DIR"'
                    " (or pass --workspace DIR)",
                )
            return cls(path)
        return cls(path, VoiceConfig.from_toml(load_toml(cfg_file), cfg_file))

    @classmethod
    def init(
        cls,
        root: str | os.PathLike[str] | None,
        speaker: str,
        wav_dir: str | None = None,
        options: dict[str, dict[str, Any]] | None = None,
    ) -> Workspace:
        """Create (or update) a workspace. Existing settings are kept unless given again."""
        ws = cls.open(root, must_exist=False)
        cfg = ws.config
        cfg.speaker = check_speaker_id(speaker or cfg.speaker)
        if wav_dir:
            cfg.wav_dir = str(to_local_path(wav_dir))
        for name, values in (options or {}).items():
            cfg.sections.setdefault(name, {}).update(
                {k: v for k, v in values.items() if v is not None}
            )
        for d in (ws.data_dir, ws.exp_root, ws.pretrained_dir, ws.tensorboard_root, ws.reports_dir):
            d.mkdir(parents=True, exist_ok=True)
        ws.save()
        gi = ws.root / ".gitignore"
        if not gi.exists():
            atomic_write_text(gi, "# generated by voicelab: nothing here belongs in git\n*\n")
        return ws

    def save(self) -> Path:
        """Write voicelab.toml, checked first: an invalid setting is never written."""
        data = _drop_none(self.config.to_toml())
        config.validate(data, self.config_file)
        self.root.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(self.config_file, tomli_w.dumps(data))

    def set_option(self, section: str, key: str, value: Any) -> None:
        """Keep ``[section] key = value`` (checked; None removes the key) and save."""
        sub = f"{section}.{key}"
        if sub in config.SECTIONS and isinstance(value, dict):  # [prepare.qc] as one table
            self.config.sections[sub] = config.validate({section: {key: value}}, "options")[sub]
            self.save()
            return
        value = config.check_value(config.lookup(f"{section}.{key}"), value, f"[{section}]")
        if value is None:
            self.config.sections.get(section, {}).pop(key, None)
        else:
            self.config.sections.setdefault(section, {})[key] = value
        self.save()

    def option(self, section: str, key: str, cli_value: Any = None, default: Any = None) -> Any:
        """Resolve one option: the command-line value, else voicelab.toml, else the default."""
        if cli_value is not None:
            return cli_value
        sub = f"{section}.{key}"
        if sub in config.SECTIONS:  # [prepare.qc]: a table of its own
            return self.config.section(sub) or default
        return self.config.sections.get(section, {}).get(key, default)

    # ---- identity -------------------------------------------------------------------------
    @property
    def speaker(self) -> str:
        if not self.config.speaker:
            raise WorkspaceError(
                f"{self.config_file} names no speaker", "run: voicelab init --speaker NAME"
            )
        return self.config.speaker

    @property
    def wav_dir(self) -> Path:
        if not self.config.wav_dir:
            raise WorkspaceError(
                "no source folder is set for this voice", 'run: voicelab init --wav-dir "DIR"'
            )
        return to_local_path(self.config.wav_dir)

    @property
    def tag(self) -> str:
        """``<speaker>_sft``: the name of this voice's data, exp and tensorboard folders."""
        return f"{self.speaker}_sft"

    # ---- paths ----------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def dataset_dir(self) -> Path:
        return self.data_dir / self.tag

    @property
    def prepare_dir(self) -> Path:
        """Intake clips, ASR cache, segments.jsonl, qc.tsv, review.tsv."""
        return self.dataset_dir / "prepare"

    def split_dir(self, split: str) -> Path:
        """Kaldi dir of ``train`` or ``dev``; features (.pt) are written beside the lists."""
        if split not in ("train", "dev"):
            raise ValueError(split)
        return self.dataset_dir / split

    def parquet_dir(self, split: str) -> Path:
        return self.split_dir(split) / "parquet"

    def data_list(self, split: str) -> Path:
        return self.parquet_dir(split) / "data.list"

    @property
    def configs_dir(self) -> Path:
        return self.root / "configs"

    @property
    def train_yaml(self) -> Path:
        return self.configs_dir / f"cosyvoice3_{self.tag}.yaml"

    @property
    def exp_root(self) -> Path:
        return self.root / "exp"

    def exp_dir(self, model: str, engine: str | None = None) -> Path:
        """A run dir: ``engine`` is the trainer's run name (``voicelab``, or upstream's
        ``torch_ddp``/``deepspeed``); without it, the current run (:meth:`run_name`)."""
        return self.exp_root / self.tag / model / (engine or self.run_name(model))

    def run_name(self, model: str) -> str:
        """The run name of ``model``'s most recent training (the run dir changed last), else the
        configured trainer's: readers (checkpoints, export, report) follow the latest run."""
        base = self.exp_root / self.tag / model
        found = [(d.stat().st_mtime_ns, n) for n in RUN_NAMES if (d := base / n).is_dir()]
        if found:
            return max(found)[1]
        train = self.config.sections.get("train", {})
        if train.get("trainer", DEFAULT_TRAINER) == "upstream":
            return str(train.get("engine") or "torch_ddp")
        return "voicelab"

    @property
    def tensorboard_root(self) -> Path:
        return self.root / "tensorboard"

    def tensorboard_dir(self, model: str, engine: str | None = None) -> Path:
        return self.tensorboard_root / self.tag / model / (engine or self.run_name(model))

    @property
    def pretrained_dir(self) -> Path:
        return self.root / "pretrained_models"

    @property
    def base_model_dir(self) -> Path:
        override = self.config.sections.get("model", {}).get("base_dir")
        return to_local_path(override) if override else self.pretrained_dir / BASE_MODEL_NAME

    @property
    def voice_name(self) -> str:
        override = self.config.sections.get("export", {}).get("name")
        return override or f"{BASE_MODEL_NAME}-{self.speaker}-sft"

    @property
    def voice_dir(self) -> Path:
        return self.pretrained_dir / self.voice_name

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def state_dir(self) -> Path:
        return self.root / ".voicelab" / "state"

    @property
    def instruct(self) -> str:
        return str(self.option("prepare", "instruct", default=DEFAULT_INSTRUCT))
