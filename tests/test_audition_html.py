"""The audition page (from fixture wavs), blind keys, and which weights/voice say and audition use.

Everything here is pure (no torch, no upstream): page rendering, unblinding, checkpoint and model
dir resolution with real files on disk.
"""

from __future__ import annotations

import json
import random
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voicelab.blocks.tts_text import HYPE_INSTRUCT
from voicelab.errors import ConfigError, InputError, ModelError, WorkspaceError
from voicelab.stages.audition import (
    GRID,
    AuditionOptions,
    Page,
    PageSentence,
    Take,
    apply_blind_key,
    blind_key,
    build_variants,
    ckpt_weights,
    default_sentences,
    key_path,
    read_sentences,
    render_html,
    run_unblind,
    unblind,
    write_page,
)
from voicelab.stages.synth import (
    BASE_FILES,
    SayOptions,
    Weights,
    check_model_dir,
    check_options,
    choose_speaker,
    join_audio,
    join_path,
    output_paths,
    resolve_model_dir,
    resolve_weights,
)
from voicelab.upstream.model_files import SPK2INFO
from voicelab.workspace import Workspace

TRAIN = "You are a helpful assistant.<|endofprompt|>"
VARIANTS = [f"{name}-{speed:.1f}" for name, speed in GRID]


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.audio: list[str] = []
        self.radios: list[dict[str, str | None]] = []
        self.tags: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if tag in ("audio", "source") and a.get("src"):
            self.audio.append(str(a["src"]))
        if tag == "input" and a.get("type") == "radio":
            self.radios.append(a)
        if tag in ("script", "link", "img") and (a.get("src") or a.get("href")):
            self.external.append(str(a.get("src") or a.get("href")))


def _tone(path: Path, seconds: float, freq: float = 220.0) -> Path:
    t = np.arange(int(24000 * seconds)) / 24000
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.3 * np.sin(2 * np.pi * freq * t), 24000, subtype="PCM_16")
    return path


def _page(tmp: Path, variants: list[str]) -> Page:
    page = Page(
        report_id="audition-20261125-101500",
        title="Audition: spk1",
        meta={"voice": "x", "device": "cpu"},
        variants={v: f"desc of {v}" for v in variants},
    )
    for i, s in enumerate(default_sentences()[:3]):
        ps = PageSentence(s.id, s.text, s.text + " (normalized)")
        for j, v in enumerate(variants):
            rel = f"audio/{s.id}__{v}.wav"
            secs = 0.2 + 0.1 * j
            _tone(tmp / rel, secs, 200 + 50 * i + 20 * j)
            ps.takes.append(Take(v, v, rel, secs, 0.5 + j))
        page.sentences.append(ps)
    return page


def _parse(html: str) -> _Page:
    p = _Page()
    p.feed(html)
    return p


def test_page_lists_every_take_and_the_files_exist(tmp_path: Path) -> None:
    page = _page(tmp_path, VARIANTS)
    index = write_page(tmp_path, page)
    html = index.read_text(encoding="utf-8")
    parsed = _parse(html)
    assert len(parsed.audio) == 3 * 4
    for src in parsed.audio:
        f = index.parent / src
        assert f.is_file(), src
        info = sf.info(f)
        assert info.samplerate == 24000 and info.frames > 0
    assert not parsed.external  # no external JS/CSS/images: works offline from disk
    assert "http://" not in html and "https://" not in html
    for v in VARIANTS:
        assert v in html
    assert default_sentences()[0].text in html
    assert "0.20 s" in html  # durations
    assert "RTF" in html
    assert not parsed.radios  # choices only in blind mode


def test_page_escapes_text(tmp_path: Path) -> None:
    page = _page(tmp_path, ["neutral-1.0"])
    page.sentences[0].text = '<script>alert("x")</script> & 你好'
    html = render_html(page)
    assert '<script>alert("x")' not in html
    assert "&lt;script&gt;" in html


def test_blind_page_hides_variant_names(tmp_path: Path) -> None:
    page = _page(tmp_path, VARIANTS)
    key = blind_key([s.id for s in page.sentences], VARIANTS, random.Random(7))
    # Files as run_audition writes them in blind mode: sentence + letter.
    for s in page.sentences:
        letter_of = {n: letter for letter, n in key[s.id].items()}
        for t in s.takes:
            new = f"audio/{s.id}__{letter_of[t.variant]}.wav"
            (tmp_path / t.wav).rename(tmp_path / new)
            t.wav = new
    apply_blind_key(page, key)
    index = write_page(tmp_path, page)
    html = index.read_text(encoding="utf-8")
    parsed = _parse(html)
    for v in [*VARIANTS, "neutral", "hype", "desc of"]:
        assert v not in html
    for src in parsed.audio:
        assert (tmp_path / src).is_file()
    assert [t.label for t in page.sentences[0].takes] == ["A", "B", "C", "D"]
    assert len(parsed.radios) == 12
    assert {r["data-sentence"] for r in parsed.radios} == {s.id for s in page.sentences}
    assert "localStorage" in html and "choices-download" in html
    assert 'data-report="audition-20261125-101500"' in html
    # The shuffle differs between sentences for this seed (not one fixed order).
    orders = {tuple(key[s.id][c] for c in "ABCD") for s in page.sentences}
    assert len(orders) > 1


def test_unblind_round_trip(tmp_path: Path) -> None:
    sids = ["s1", "s2", "s3"]
    key = blind_key(sids, ["epoch_4", "epoch_6", "avg"], random.Random(1))
    rid = "audition-20261125-101500"
    kfile = key_path(tmp_path / "reports", rid)
    kfile.parent.mkdir(parents=True)
    kfile.write_text(json.dumps({"report": rid, "sentences": key}), encoding="utf-8")
    want = {"s1": "epoch_6", "s2": "epoch_6", "s3": "avg"}
    letters = {sid: next(k for k, v in key[sid].items() if v == want[sid]) for sid in sids}
    choices = tmp_path / "dl" / f"{rid}-choices.json"
    choices.parent.mkdir()
    choices.write_text(json.dumps({"report": rid, "choices": letters}), encoding="utf-8")
    res = run_unblind(choices, None, [tmp_path / "reports"])
    assert res.tally["epoch_6"] == 2 and res.tally["avg"] == 1 and res.tally["epoch_4"] == 0
    assert next(iter(res.tally)) == "epoch_6"
    assert not res.unanswered
    partial = unblind({"report": rid, "choices": {"s1": letters["s1"]}}, {"sentences": key})
    assert partial.unanswered == ["s2", "s3"]
    with pytest.raises(InputError, match="no key file"):
        run_unblind(choices, None, [tmp_path / "other" / "reports"])
    with pytest.raises(InputError, match="is for"):
        unblind({"report": "other", "choices": {}}, {"report": rid, "sentences": key})


def test_read_sentences(tmp_path: Path) -> None:
    f = tmp_path / "s.txt"
    f.write_text("# comment\n\n你好，世界。\nen\tHello there.\n", encoding="utf-8")
    got = read_sentences(f)
    assert [(s.id, s.text) for s in got] == [("s03", "你好，世界。"), ("en", "Hello there.")]
    (tmp_path / "empty.txt").write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(InputError, match="no sentences"):
        read_sentences(tmp_path / "empty.txt")
    with pytest.raises(InputError, match="does not exist"):
        read_sentences(tmp_path / "missing.txt")


def test_default_sentences_cover_the_cases() -> None:
    texts = " ".join(s.text for s in default_sentences())
    for needle in ("银行", "行走", "重要", "重复", "2025", "3999", "Hello"):
        assert needle in texts
    assert max(len(s.text) for s in default_sentences()) > 120  # a long paragraph


# ---- weights and voice resolution -----------------------------------------------------------
def _ws(tmp_path: Path, epochs: tuple[int, ...] = (), locked: int | None = None) -> Workspace:
    ws = Workspace.init(tmp_path / "ws", "spk1")
    for e in epochs:
        p = ws.exp_dir("llm") / f"epoch_{e}_whole.pt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    if locked is not None:
        ws.config.locked_epoch = locked
        ws.save()
    return ws


def test_weights_order(tmp_path: Path) -> None:
    ws = _ws(tmp_path, epochs=(4, 6), locked=4)
    ckpt = tmp_path / "my.pt"
    ckpt.write_bytes(b"x")
    flow = tmp_path / "flow_epoch_2.pt"
    flow.write_bytes(b"x")
    # explicit checkpoint > --epoch > locked epoch > exported voice
    assert resolve_weights(ws, llm_ckpt=ckpt, epoch=6).llm == ckpt
    assert resolve_weights(ws, epoch=6).llm == ws.exp_dir("llm") / "epoch_6_whole.pt"
    locked = resolve_weights(ws)
    assert locked.llm == ws.exp_dir("llm") / "epoch_4_whole.pt" and "locked" in locked.label
    assert resolve_weights(_ws(tmp_path / "b", epochs=(4,))) == Weights()
    assert resolve_weights(None) == Weights()
    both = resolve_weights(ws, flow_ckpt=flow)
    assert both.flow == flow and both.llm == locked.llm
    # A voice exported from exactly the locked epoch already is it: nothing to hot-load.
    voice = tmp_path / "voice"
    voice.mkdir()
    prov = {"llm": {"checkpoints": [{"file": "epoch_4_whole.pt", "epoch": 4}]}}
    (voice / "voicelab.json").write_text(json.dumps(prov), encoding="utf-8")
    same = resolve_weights(ws, voice_dir=voice)
    assert same.llm is None and "epoch 4" in same.label
    prov["llm"]["checkpoints"].append({"file": "epoch_6_whole.pt"})  # an average: not the same
    (voice / "voicelab.json").write_text(json.dumps(prov), encoding="utf-8")
    assert resolve_weights(ws, voice_dir=voice).llm == locked.llm
    # A locked epoch whose file is gone (pruned after export): the exported voice.
    assert resolve_weights(_ws(tmp_path / "c", epochs=(), locked=3)).llm is None


def test_weights_errors(tmp_path: Path) -> None:
    ws = _ws(tmp_path, epochs=(4, 6))
    with pytest.raises(ModelError) as e:
        resolve_weights(ws, epoch=9)
    assert "epochs on disk: 4, 6" in e.value.one_line()
    with pytest.raises(ModelError) as e:
        resolve_weights(_ws(tmp_path / "b"), epoch=1)
    assert "train first" in e.value.one_line()
    with pytest.raises(ModelError, match="does not exist"):
        resolve_weights(ws, llm_ckpt=tmp_path / "nope.pt")
    with pytest.raises(ModelError, match="--flow-ckpt"):
        resolve_weights(ws, flow_ckpt=tmp_path / "nope.pt")
    with pytest.raises(WorkspaceError, match="--epoch needs"):
        resolve_weights(None, epoch=3)


def test_compare_ckpts(tmp_path: Path) -> None:
    ws = _ws(tmp_path, epochs=(4, 6))
    other = ws.exp_dir("llm") / "llm_avg.pt"
    other.write_bytes(b"x")
    assert ckpt_weights(ws, "avg").llm is None
    assert ckpt_weights(ws, "epoch_4").llm == ws.exp_dir("llm") / "epoch_4_whole.pt"
    assert ckpt_weights(ws, "6").llm == ws.exp_dir("llm") / "epoch_6_whole.pt"
    assert ckpt_weights(ws, "llm_avg").llm == other
    assert ckpt_weights(ws, str(other)).llm == other
    with pytest.raises(ModelError) as e:
        ckpt_weights(ws, "epoch_9")
    assert "epoch_4, epoch_6" in e.value.one_line()
    vs = build_variants(ws, TRAIN, Weights(), compare_ckpts="epoch_4,epoch_6,avg")
    assert [v.name for v in vs] == ["epoch_4", "epoch_6", "avg"]
    assert vs[2].weights.llm is None and vs[0].instruct == TRAIN
    grid = build_variants(ws, TRAIN, Weights(), compare=True)
    assert [v.name for v in grid] == VARIANTS
    assert [v.speed for v in grid] == [1.0, 1.1, 1.0, 1.1]
    assert grid[2].instruct == HYPE_INSTRUCT and grid[0].instruct == TRAIN
    crossed = build_variants(ws, TRAIN, Weights(), compare=True, compare_ckpts="epoch_4,avg")
    assert len(crossed) == 8 and crossed[0].name == "epoch_4_neutral-1.0"
    with pytest.raises(ConfigError):
        build_variants(ws, TRAIN, Weights(), compare=True, preset="hype")
    with pytest.raises(ConfigError, match="twice"):
        build_variants(ws, TRAIN, Weights(), compare_ckpts="avg,avg")


def _model_dir(path: Path, skip: tuple[str, ...] = ()) -> Path:
    path.mkdir(parents=True)
    for name in (*BASE_FILES, SPK2INFO):
        if name in skip:
            continue
        if name == "CosyVoice-BlankEN":
            (path / name).mkdir()
        else:
            (path / name).write_bytes(b"x")
    return path


def test_model_dir_checks(tmp_path: Path) -> None:
    check_model_dir(_model_dir(tmp_path / "ok"))
    with pytest.raises(ModelError) as e:
        check_model_dir(_model_dir(tmp_path / "nospk", skip=(SPK2INFO,)))
    assert "missing spk2info.pt" in e.value.one_line() and "voicelab export" in e.value.one_line()
    with pytest.raises(ModelError) as e:
        check_model_dir(_model_dir(tmp_path / "nobase", skip=("llm.pt", "campplus.onnx")))
    line = e.value.one_line()
    assert "llm.pt, campplus.onnx" in line and "voicelab download cosyvoice3" in line
    with pytest.raises(ModelError, match="does not exist"):
        check_model_dir(tmp_path / "none")
    ws = _ws(tmp_path)
    assert resolve_model_dir(ws, None) == ws.voice_dir
    assert resolve_model_dir(ws, tmp_path / "x") == tmp_path / "x"
    with pytest.raises(WorkspaceError, match="--model-dir"):
        resolve_model_dir(None, None)


def test_choose_speaker() -> None:
    assert choose_speaker(["xuan"], None, None) == "xuan"
    assert choose_speaker(["a", "xuan"], None, "xuan") == "xuan"
    assert choose_speaker(["a", "b"], "b", "xuan") == "b"
    with pytest.raises(ModelError) as e:
        choose_speaker(["a", "b"], "c", None)
    assert "available: a, b" in e.value.one_line()
    with pytest.raises(ConfigError) as e2:
        choose_speaker(["b", "a"], None, "xuan")
    assert "--speaker: a, b" in e2.value.one_line()
    with pytest.raises(ModelError, match="no speakers"):
        choose_speaker([], None, None)


def test_outputs_and_options(tmp_path: Path) -> None:
    assert output_paths(tmp_path / "a.wav", ["x"]) == [tmp_path / "a.wav"]
    assert output_paths(tmp_path / "a.wav", ["x", "y"]) == [
        tmp_path / "a-001.wav",
        tmp_path / "a-002.wav",
    ]
    names = [p.name for p in output_paths(tmp_path / "out", ["你好 世界", "b/c"])]
    assert names[0].startswith("001-你好_世界") and names[1].startswith("002-b_c")
    assert join_path(tmp_path / "a.wav") == tmp_path / "a-joined.wav"
    assert join_path(tmp_path / "out") == tmp_path / "out" / "joined.wav"
    joined = join_audio([np.ones(10, np.float32), np.ones(5, np.float32)], 100, 0.3)
    assert len(joined) == 10 + 30 + 5 and joined[10:40].sum() == 0
    with pytest.raises(ConfigError, match="--stream"):
        check_options(SayOptions(stream=True, speed=1.1))
    with pytest.raises(ConfigError, match="out of range"):
        check_options(SayOptions(speed=5))
    check_options(SayOptions(stream=True))


def test_preset_and_prompt_text_are_one_choice() -> None:
    """say, audition and the web page share VoiceChoice: one of --preset / --prompt-text."""
    from click.testing import CliRunner

    from voicelab.cli.main import cli

    for cls in (SayOptions, AuditionOptions):
        with pytest.raises(ConfigError, match="--preset and --prompt-text"):
            cls(preset="hype", prompt_text="Speak slowly.<|endofprompt|>")
        assert cls(preset="hype").preset == "hype"
    assert AuditionOptions().seed == 0 and SayOptions().seed is None
    for cmd in (["say", "hi"], ["audition"]):
        res = CliRunner().invoke(cli, [*cmd, "--preset", "hype", "--prompt-text", "x"])
        assert isinstance(res.exception, ConfigError), res.output
        assert "--preset and --prompt-text" in str(res.exception)


# ---- issue 15 item 28 -----------------------------------------------------------------------


def test_take_links_are_url_quoted(tmp_path: Path) -> None:
    page = _page(tmp_path, ["neutral-1.0"])
    t = page.sentences[0].takes[0]
    odd = "audio/line #1 50%?.wav"
    (tmp_path / t.wav).rename(tmp_path / odd)
    t.wav = odd
    index = write_page(tmp_path, page)
    src = _parse(index.read_text(encoding="utf-8")).audio[0]
    assert src == "audio/line%20%231%2050%25%3F.wav"
    from urllib.parse import unquote

    assert (index.parent / unquote(src)).is_file()


def test_blind_key_is_not_beside_the_pages(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws", "spk1")
    key = key_path(ws.reports_dir, "audition-20261125-101500")
    assert ws.reports_dir not in key.parents  # not in reports/ nor in a report folder
    assert ws.root in key.parents
