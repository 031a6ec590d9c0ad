"""The web page's parts without a browser: background jobs (one per workspace, the library's
progress bars and log lines, the CLI's error line), the pending review file read back by the
CLI's own reader, and blind A/B votes joined with the audition key."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voicelab.console import track
from voicelab.errors import InputError
from voicelab.fsutil import atomic_write_json
from voicelab.stages.audition import key_path
from voicelab.stages.prepare import read_review
from voicelab.web import listening, review
from voicelab.web.jobs import JobBusy, JobManager
from voicelab.workspace import Workspace


def _wait(job, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while job.state == "running":
        assert time.time() < deadline, "the job did not end"
        time.sleep(0.02)


def test_jobs_one_per_workspace_progress_log_and_error(tmp_path: Path) -> None:
    jobs = JobManager()
    try:
        gate = threading.Event()

        def work(_job) -> dict:
            for _ in track(range(3), "counting"):
                logging.getLogger("voicelab.test").warning("step")
            gate.wait(10)
            return {"n": 3}

        job = jobs.start(tmp_path, "prepare", work)
        with pytest.raises(JobBusy, match="a prepare job is still running") as busy:
            jobs.start(tmp_path, "train-llm", lambda _j: None)
        assert busy.value.hint == "wait for it to finish, or stop it first"
        # Another workspace is not held by this one's job.
        other = jobs.start(tmp_path / "other", "say", lambda _j: {"ok": True})
        gate.set()
        _wait(job)
        _wait(other)
        snap = job.snapshot()
        assert snap["state"] == "done" and snap["result"] == {"n": 3}
        assert [(p["what"], p["done"], p["total"]) for p in snap["progress"]] == [
            ("counting", 3, 3)
        ]
        assert [entry["text"] for entry in snap["log"]] == ["step"] * 3
        assert other.snapshot()["log"] == []  # log lines stay with their job's thread

        def fail(_job) -> None:
            raise InputError("no audio found in /x", "put recordings in the folder")

        bad = jobs.start(tmp_path, "prepare", fail)
        _wait(bad)
        assert bad.state == "failed"
        assert bad.error["line"] == "error: no audio found in /x (put recordings in the folder)"
        with pytest.raises(JobBusy, match="no job is running"):
            jobs.stop(tmp_path)
    finally:
        jobs.close()


def _segments_ws(tmp_path: Path) -> Workspace:
    """A workspace holding prepare's manifest for two segments (what the review list reads)."""
    import json

    ws = Workspace.init(tmp_path / "ws", "spk1")
    clips = ws.prepare_dir / "clips"
    clips.mkdir(parents=True)
    rows = []
    for i, status in enumerate(("kept", "excluded")):
        wav = clips / f"spk1_a_{i:04d}.wav"
        sf.write(wav, np.zeros(2400, dtype=np.float32), 24000)
        reasons = (
            []
            if status == "kept"
            else [
                {
                    "code": "too_short",
                    "metric": "duration",
                    "value": 0.1,
                    "threshold": 0.5,
                    "hard": False,
                }
            ]
        )
        rows.append(
            {
                "utt": wav.stem,
                "status": status,
                "split": "train" if i == 0 else None,
                "text": f"text {i}",
                "wav": str(wav),
                "source_rel": "a.wav",
                "reasons": reasons,
                "risk": 0.5 * i,
                "qc": {"duration": 0.1},
            }
        )
    (ws.prepare_dir / "segments.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
    )
    return ws


def test_pending_review_is_a_review_file(tmp_path: Path) -> None:
    ws = _segments_ws(tmp_path)
    review.edit(ws, "spk1_a_0000", text="  fixed\ttext  ")
    review.edit(ws, "spk1_a_0000", keep=False)
    review.edit(ws, "spk1_a_0001", keep=True)
    # The CLI's own reader takes the page's file (what --apply-review FILE would read).
    rows = {r["id"]: r for r in read_review(review.pending_path(ws))}
    assert rows == {
        "spk1_a_0000": {"id": "spk1_a_0000", "text": "fixed text", "keep": "0"},
        "spk1_a_0001": {"id": "spk1_a_0001", "text": "text 1", "keep": "1"},
    }
    listed = {r["id"]: r for r in review.segment_rows(ws)}
    assert listed["spk1_a_0001"]["reasons"] == ["too_short"]
    assert listed["spk1_a_0000"]["pending"]["keep"] == "0"
    assert review.clip_path(ws, "spk1_a_0001").name == "spk1_a_0001.wav"
    with pytest.raises(InputError, match="the transcript is empty"):
        review.edit(ws, "spk1_a_0000", text="   ")
    with pytest.raises(InputError, match="unknown segment"):
        review.edit(ws, "nope", keep=True)
    # A new prepare run without the first segment: its edit goes, the other one stays.
    manifest = ws.prepare_dir / "segments.jsonl"
    manifest.write_text(manifest.read_text("utf-8").splitlines()[1] + "\n", encoding="utf-8")
    assert review.prune(ws) == 1
    assert list(review.read_pending(ws)) == ["spk1_a_0001"]
    review.discard(ws)
    assert review.read_pending(ws) == {}


def test_blind_votes_saved_and_unblinded(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws", "spk1")
    rid = "audition-20260101-000000"
    rdir = ws.reports_dir / rid
    for sid in ("s1", "s2"):
        for letter in "AB":
            path = rdir / "audio" / f"{sid}__{letter}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, np.zeros(2400, dtype=np.float32), 24000)
    atomic_write_json(
        rdir / "audition.json",
        {
            "report": rid,
            "blind": True,
            "meta": {},
            "sentences": [{"id": "s1", "text": "one"}, {"id": "s2", "text": "two"}],
        },
    )
    key = {"s1": {"A": "epoch_0", "B": "avg"}, "s2": {"A": "avg", "B": "epoch_0"}}
    atomic_write_json(key_path(ws.reports_dir, rid), {"report": rid, "sentences": key})
    [entry] = listening.list_auditions(ws)
    assert [t["label"] for t in entry["sentences"][0]["takes"]] == ["A", "B"]
    assert entry["sentences"][0]["takes"][0]["path"] == f"reports/{rid}/audio/s1__A.wav"
    first = listening.save_vote(ws, rid, "s1", "B")
    assert first == {"choices": {"s1": "B"}, "tally": None}  # not revealed before the end
    done = listening.save_vote(ws, rid, "s2", "A")
    assert done["tally"] == {"avg": 2, "epoch_0": 0}
    with pytest.raises(InputError, match="no take 'C'"):
        listening.save_vote(ws, rid, "s1", "C")


def test_jobs_hold_the_workspace_lock_the_cli_takes(tmp_path: Path) -> None:
    """A page job and a writing command in a terminal never run on one workspace at once."""
    from voicelab.errors import VoiceLabError
    from voicelab.locks import workspace_lock

    ws = Workspace.init(tmp_path / "ws", "spk1")
    jobs = JobManager()
    try:
        gate = threading.Event()
        job = jobs.start(ws.root, "prepare", lambda _j: gate.wait(10) and None)
        # What `voicelab prepare` in a terminal does first: it is refused, naming the page's job.
        with pytest.raises(VoiceLabError, match="voicelab ui: prepare"):
            workspace_lock(ws.root, "voicelab prepare")
        gate.set()
        _wait(job)
        workspace_lock(ws.root, "voicelab prepare").release()  # free again once the job ended
        # A terminal command holding the workspace: the page's job is refused with its line.
        held = workspace_lock(ws.root, "voicelab train")
        try:
            with pytest.raises(VoiceLabError, match=r"voicelab train \(PID \d+\)"):
                jobs.start(ws.root, "export", lambda _j: None)
            # Speaking only reads: it runs beside a writer, as the CLI's `say` does.
            _wait(jobs.start(ws.root, "say", lambda _j: {"ok": True}))
        finally:
            held.release()
    finally:
        jobs.close()
