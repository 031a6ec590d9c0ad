"""Typed voicelab.toml (issue 14/15): unknown keys and bad values fail at load, flags apply to one
run, ``voicelab config`` keeps settings, -w after the subcommand, init's early refusals."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from voicelab.errors import ConfigError, InputError, WorkspaceError
from voicelab.workspace import Workspace, check_source_dir


def voicelab(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI in a real process (PYTHONPATH is inherited)."""
    return subprocess.run(
        [sys.executable, "-m", "voicelab", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def _ws(tmp_path: Path, toml: str) -> Path:
    root = tmp_path / "ws"
    Workspace.init(root, "xuan")
    (root / "voicelab.toml").write_text(toml, "utf-8")
    return root


# ---- load-time checks (items 9 config part, 14) ------------------------------------------------
@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ('[voice]\nspeaker = "xuan"\n[qc]\nmin_snr_db = 10\n', ["[qc]", "[prepare.qc]"]),
        ('[voice]\nspeaker = "xuan"\n[train]\nepoch = 5\n', ["'epoch'", "[train]", "epochs"]),
        ('[voice]\nspeaker = "xuan"\n[prepare]\nasr = "whisper"\n', ["asr", "faster-whisper"]),
        ('[voice]\nspeaker = "xuan"\n[prepare]\ndev_ratio = 2\n', ["dev_ratio", "out of range"]),
        ('[voice]\nspeaker = "xuan"\n[train]\nepochs = "five"\n', ["epochs", "whole number"]),
        ('[voice]\nspeaker = "xuan"\n[prepare.qc]\nmin_snr = 10\n', ["min_snr", "min_snr_db"]),
        (
            '[voice]\nspeaker = "xuan"\n[prepare]\nmin_seconds = 30.0\nmax_seconds = 5.0\n',
            ["min_seconds", "max_seconds"],
        ),
    ],
)
def test_bad_toml_fails_at_load_naming_file_key_and_choices(
    tmp_path: Path, toml: str, words: list[str]
) -> None:
    root = _ws(tmp_path, toml)
    with pytest.raises(ConfigError) as e:
        Workspace.open(root)
    line = e.value.one_line()
    assert "\n" not in line and str(root / "voicelab.toml") in line
    for w in words:
        assert w in line, line
    # the CLI says the same in one line, no traceback
    r = voicelab("-w", str(root), "status")
    assert r.returncode == 1 and "Traceback" not in r.stderr and words[0] in r.stderr


def test_toml_written_by_0_1_keeps_loading(tmp_path: Path) -> None:
    """0.1 wrote locked_epoch at the top, [prepare] qc as an inline table and [run]."""
    root = _ws(
        tmp_path,
        'locked_epoch = 6\n[voice]\nspeaker = "xuan"\nwav_dir = "/data/x"\n'
        '[prepare]\nasr = "transcripts"\nmin_seconds = 1.0\nqc = { min_snr_db = 10.0 }\n'
        '[train]\nepochs = 4\ndevice = "cpu"\n[run]\ntrain_flow = false\ntiny = true\n'
        'device = "cpu"\n[model]\nbase_dir = "/m"\n[audition]\nsentences = "/s.txt"\n',
    )
    ws = Workspace.open(root)
    assert ws.config.locked_epoch == 6
    assert ws.option("prepare", "qc") == {"min_snr_db": 10.0}
    assert ws.option("train", "epochs") == 4
    ws.save()  # round trip: still loads, values kept
    again = Workspace.open(root)
    assert again.config.locked_epoch == 6 and again.option("prepare", "qc") == {"min_snr_db": 10.0}


def test_save_refuses_an_invalid_setting_and_writes_nothing(tmp_workspace: Workspace) -> None:
    before = tmp_workspace.config_file.read_text("utf-8")
    with pytest.raises(ConfigError):
        tmp_workspace.set_option("prepare", "dev_ratio", 2.0)
    with pytest.raises(ConfigError):
        tmp_workspace.set_option("prepare", "compute_type", "nonsense")
    with pytest.raises(ConfigError):
        tmp_workspace.set_option("qc", "min_snr_db", 10.0)
    assert tmp_workspace.config_file.read_text("utf-8") == before


# ---- flags apply to their run; config keeps settings (item 7) ---------------------------------
def test_failed_prepare_saves_none_of_its_options(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    root = tmp_path / "ws"
    assert (
        voicelab("-w", str(root), "init", "--speaker", "xuan", "--wav-dir", str(src)).returncode
        == 0
    )
    before = (root / "voicelab.toml").read_text("utf-8")
    bad = [
        ["--dev-ratio", "2"],
        ["--compute-type", "nonsense"],
        ["--min-seconds", "30", "--max-seconds", "5"],
        ["--asr", "transcripts", "--whisper-model", "/nonexistent/dir", "--limit", "10"],
    ]
    for flags in bad:
        r = voicelab("-w", str(root), "prepare", *flags)
        assert r.returncode == 1, (flags, r.stderr)
        assert (root / "voicelab.toml").read_text("utf-8") == before, flags
    # and the next plain prepare is not poisoned by them: it fails only for the empty folder
    r = voicelab("-w", str(root), "prepare")
    assert r.returncode == 1 and "dev_ratio" not in r.stderr and "compute" not in r.stderr


def test_trial_prepare_leaves_toml_unchanged(tmp_path: Path) -> None:
    from voicelab.testing.corpus import build_corpus

    corpus = build_corpus()
    src = tmp_path / "src"
    src.mkdir()
    rows = ["file\ttext"]
    for clip in corpus.clips[:2]:
        shutil.copy(clip.path, src / clip.path.name)
        rows.append(f"{src / clip.path.name}\t{clip.text}")
    tsv = tmp_path / "t.tsv"
    tsv.write_text("\n".join(rows) + "\n", "utf-8")
    root = tmp_path / "ws"
    assert (
        voicelab("-w", str(root), "init", "--speaker", "xuan", "--wav-dir", str(src)).returncode
        == 0
    )
    before = (root / "voicelab.toml").read_text("utf-8")
    r = voicelab(
        "prepare", "-w", str(root), "--asr", "transcripts", "--transcripts", str(tsv),
        "--limit", "10", "--device", "cpu", "--min-seconds", "1",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (root / "voicelab.toml").read_text("utf-8") == before
    # keeping a setting is explicit
    r = voicelab("-w", str(root), "config", "set", "prepare.asr", "transcripts")
    assert r.returncode == 0, r.stderr
    assert Workspace.open(root).option("prepare", "asr") == "transcripts"
    assert (
        voicelab("-w", str(root), "config", "get", "prepare.asr").stdout.strip() == '"transcripts"'
    )
    assert voicelab("-w", str(root), "config", "get", "prepare.dev_ratio").stdout.strip() == "0.05"


def test_config_set_checks_before_writing(tmp_workspace: Workspace) -> None:
    root = str(tmp_workspace.root)
    before = tmp_workspace.config_file.read_text("utf-8")
    for key, value, word in [
        ("train.epoch", "5", "epochs"),
        ("qc.min_snr_db", "10", "prepare.qc"),
        ("train.epochs", "five", "whole number"),
        ("prepare.asr", "whisper", "funasr"),
    ]:
        r = voicelab("-w", root, "config", "set", key, value)
        assert r.returncode == 1 and word in r.stderr, r.stderr
    assert tmp_workspace.config_file.read_text("utf-8") == before
    assert voicelab("config", "-w", root, "set", "prepare.qc.min_snr_db", "10").returncode == 0
    assert Workspace.open(root).option("prepare", "qc") == {"min_snr_db": 10.0}
    shown = voicelab("-w", root, "config", "show").stdout
    assert "prepare.qc.min_snr_db = 10.0" in shown
    assert voicelab("-w", root, "config", "unset", "prepare.qc.min_snr_db").returncode == 0
    assert Workspace.open(root).option("prepare", "qc") is None


# ---- item 23 -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags", [["--threads", "0"], ["--token-batch", "-3"], ["--device", "cpu", "--threads", "-1"]]
)
def test_features_refuses_nonsense_counts(tmp_workspace: Workspace, flags: list[str]) -> None:
    r = voicelab("-w", str(tmp_workspace.root), "features", *flags)
    assert r.returncode == 1 and "out of range" in r.stderr and "Traceback" not in r.stderr


# ---- item 16 -------------------------------------------------------------------------------
def test_workspace_option_after_the_subcommand(tmp_workspace: Workspace, tmp_path: Path) -> None:
    root = str(tmp_workspace.root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args in (["status", "-w", root], ["status", "--workspace", root], ["-w", root, "status"]):
        r = voicelab(*args, cwd=elsewhere)
        assert r.returncode == 0, (args, r.stderr)
        assert f"workspace {root}" in r.stdout
    r = voicelab("config", "show", "-w", root, cwd=elsewhere)
    assert r.returncode == 0 and 'voice.speaker = "spk1"' in r.stdout


# ---- item 17 -------------------------------------------------------------------------------
def test_init_refuses_a_file_as_workspace(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("x")
    with pytest.raises(WorkspaceError, match="is a file"):
        Workspace.init(f, "xuan")
    r = voicelab("-w", str(f), "init", "--speaker", "xuan")
    assert r.returncode == 1 and "is a file" in r.stderr and "Traceback" not in r.stderr


def test_init_refuses_a_missing_recordings_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        check_source_dir(tmp_path / "nope")
    r = voicelab("-w", str(tmp_path / "ws"), "init", "--speaker", "xuan", "--wav-dir",
                 str(tmp_path / "nope"))  # fmt: skip
    assert r.returncode == 1 and "does not exist" in r.stderr
    assert not (tmp_path / "ws" / "voicelab.toml").exists()


def test_init_decides_about_spaces_in_the_workspace_path(tmp_path: Path) -> None:
    for cmd in (["init", "--speaker", "xuan"], ["run", "--speaker", "xuan"]):
        r = voicelab("-w", str(tmp_path / "my voice"), *cmd)
        assert r.returncode == 1 and "whitespace" in r.stderr, r.stderr
        assert not (tmp_path / "my voice" / "voicelab.toml").exists()


def test_run_checks_the_recordings_folder_before_any_download(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    r = voicelab("-w", str(root), "run", "--speaker", "xuan", "--wav-dir", str(tmp_path / "nope"))
    assert r.returncode == 1 and "does not exist" in r.stderr
    assert not (root / "pretrained_models").exists()
    # an existing workspace whose recordings folder went away: refused before vendor/download
    src = tmp_path / "src"
    src.mkdir()
    Workspace.init(root, "xuan", str(src))
    src.rmdir()
    r = voicelab("-w", str(root), "run", "--skip-doctor")
    assert r.returncode == 1 and "does not exist" in r.stderr, r.stderr
    assert not (root / ".voicelab" / "state" / "vendor.json").exists()
