from pathlib import Path

import pytest

from voicelab.errors import ConfigError, WorkspaceError
from voicelab.state import stage_run, staleness
from voicelab.workspace import Workspace


def test_init_creates_layout_and_toml(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "w", "xuan", r"C:\AIGC\数据集\xuan")
    assert ws.config_file.is_file()
    for d in ("data", "exp", "pretrained_models", "tensorboard", "reports"):
        assert (ws.root / d).is_dir()
    again = Workspace.open(tmp_path / "w")
    assert again.speaker == "xuan"
    assert again.wav_dir == Path("/mnt/c/AIGC/数据集/xuan")
    assert again.dataset_dir == tmp_path / "w" / "data" / "xuan_sft"
    assert again.exp_dir("llm") == tmp_path / "w" / "exp" / "xuan_sft" / "llm" / "voicelab"
    assert again.exp_dir("llm", "torch_ddp").name == "torch_ddp"
    assert again.voice_dir.name == "Fun-CosyVoice3-0.5B-xuan-sft"
    assert (ws.root / ".gitignore").read_text().strip().endswith("*")


def test_reinit_keeps_settings_and_sections(tmp_path: Path) -> None:
    Workspace.init(tmp_path / "w", "xuan", "/data/x", {"prepare": {"language": "zh"}})
    ws = Workspace.init(tmp_path / "w", "xuan")
    assert ws.config.wav_dir == "/data/x"
    assert ws.option("prepare", "language") == "zh"


def test_flags_override_toml(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "w", "xuan", options={"train": {"epochs": 10}})
    assert ws.option("train", "epochs") == 10
    assert ws.option("train", "epochs", cli_value=3) == 3
    assert ws.option("train", "missing", default="d") == "d"


def test_env_var_selects_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Workspace.init(tmp_path / "envws", "a")
    monkeypatch.setenv("VOICELAB_WORKSPACE", str(tmp_path / "envws"))
    assert Workspace.open().speaker == "a"


def test_locked_epoch_round_trip(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "w", "xuan")
    ws.config.locked_epoch = 6
    ws.save()
    assert Workspace.open(tmp_path / "w").config.locked_epoch == 6


def test_missing_workspace_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError) as e:
        Workspace.open(tmp_path / "nothing")
    assert "voicelab init" in e.value.one_line()
    assert "\n" not in e.value.one_line()


@pytest.mark.parametrize("bad", ["", "has space", "a/b", "-x"])
def test_bad_speaker_rejected(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError):
        Workspace.init(tmp_path / "w", bad)


def test_bad_toml_is_config_error(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "voicelab.toml").write_text("[voice\nspeaker=")
    with pytest.raises(ConfigError):
        Workspace.open(tmp_path / "w")


def test_stage_records_staleness(tmp_workspace: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    assert staleness(tmp_workspace, "s", ["a"], {"x": 1}) == (False, "never run")
    with stage_run(tmp_workspace, "s", ["a"], {"x": 1}) as rec:
        out.write_text("ok")
        rec.outputs.append(out)
        rec.figures["n"] = 1
    assert staleness(tmp_workspace, "s", ["a"], {"x": 1}) == (True, "up to date")
    assert staleness(tmp_workspace, "s", ["b"], {"x": 1}) == (False, "inputs changed")
    assert staleness(tmp_workspace, "s", ["a"], {"x": 2}) == (False, "options changed: x")
    out.unlink()
    assert staleness(tmp_workspace, "s", ["a"], {"x": 1})[1].startswith("output missing")


def test_failed_stage_is_recorded(tmp_workspace: Workspace) -> None:
    with pytest.raises(ConfigError), stage_run(tmp_workspace, "f", [], {}):
        raise ConfigError("bad", "fix it")
    from voicelab.state import load_record

    rec = load_record(tmp_workspace, "f")
    assert rec is not None and rec.status == "failed" and rec.error == "bad (fix it)"


def test_cli_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "voicelab",
            "-w",
            str(tmp_path / "none"),
            "init",
            "--speaker",
            "a b",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "'_' or '-'" in lines[0] and "Traceback" not in out.stderr
