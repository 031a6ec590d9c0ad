"""The dataset records (issue 14 item 3): explicit fields, and the files of 0.1 still load."""

from __future__ import annotations

import json
from pathlib import Path

from voicelab.blocks.kaldi import read_kaldi_dir, write_kaldi_dir
from voicelab.blocks.records import Clip, PackedUtt, Segment, Utt, read_segments


def test_segment_row_round_trip() -> None:
    clip = Clip("spk1_a_0001", "spk1_a_0001.wav", 0.5, 2.25, "abc", {"duration": 1.75})
    s = Segment.from_clip(clip, "/src/a.wav", "a.wav", "/ws/prepare/clips/spk1_a_0001.wav")
    s.text, s.status, s.split, s.qc = "你好", "kept", "train", {"duration": 1.75, "snr_db": 30.0}
    s.reasons = []
    s.overridden = ["low_snr"]
    row = s.to_dict()
    assert list(row)[:3] == ["utt", "status", "split"] and row["overridden"] == ["low_snr"]
    back = Segment.from_dict(json.loads(json.dumps(row, ensure_ascii=False)))
    assert (back.utt, back.text, back.status, back.split, back.sha) == (
        "spk1_a_0001", "你好", "kept", "train", "abc"
    )  # fmt: skip
    assert back.kept and back.duration == 1.75 and back.overridden == ["low_snr"]
    assert Clip.from_dict(clip.to_dict()) == clip


def test_segment_rows_of_0_1_load(tmp_path: Path) -> None:
    rows = [
        {"id": "u1", "keep": True, "duration": 2.5, "text": "a"},
        {"id": "u2", "keep": False, "reason": "low_snr(12<15), too_short", "duration": 0.4},
        {"utt": "u3", "status": "excluded", "reasons": ["clipping"], "qc": {"duration": 3}},
        {"utt": "u4", "start": 1.0, "end": 3.5, "reasons": [], "raw_text": None},
    ]
    path = tmp_path / "segments.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", "utf-8")
    u1, u2, u3, u4 = read_segments(path)
    assert u1.utt == "u1" and u1.kept and u1.duration == 2.5
    assert not u2.kept and u2.reason_codes == ["low_snr", "too_short"]
    assert u2.reasons_text == "low_snr, too_short"
    assert u3.reason_codes == ["clipping"] and u3.duration == 3.0
    assert u4.kept and u4.duration == 2.5 and u4.raw_text == ""
    assert read_segments(tmp_path / "none.jsonl") == []


def test_utt_through_a_kaldi_dir(tmp_path: Path) -> None:
    utts = [Utt("s_2", Path("/x/2.wav"), "two", "s", "I.<|endofprompt|>"),
            Utt("s_1", Path("/x/1.wav"), "one", "s", "I.<|endofprompt|>")]  # fmt: skip
    write_kaldi_dir(tmp_path, utts)
    assert read_kaldi_dir(tmp_path) == sorted(utts, key=lambda u: u.utt)
    assert Utt.from_dict(utts[0].to_dict()) == utts[0]


def test_packed_utt_lengths() -> None:
    u = PackedUtt("a", 2.0, 5, 50)
    assert u.frames == 100 and PackedUtt.from_dict(u.to_dict()) == u
