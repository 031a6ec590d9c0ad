"""Text rules for `voicelab say`: normalization, splitting, instruct and marker handling."""

from __future__ import annotations

import pytest

from voicelab.blocks.textnorm import count_units
from voicelab.blocks.tts_text import (
    HYPE_INSTRUCT,
    MARKER,
    normalize_instruct,
    plan_texts,
    plan_utterance,
    resolve_instruct,
    split_input,
    strip_markers,
)
from voicelab.errors import ConfigError, InputError

TRAIN = "You are a helpful assistant.<|endofprompt|>"

# text, text_frontend, expected lang, substrings every joined segment text must contain,
# substrings it must not contain, minimum number of segments
CASES = [
    ("你好，世界", True, "zh", ["你好，世界"], [], 1),
    ("我用iPhone打了3个电话。", True, "zh", ["iPhone", "三个电话"], ["3"], 1),
    ("It costs 3 dollars.", True, "en", ["three dollars"], ["3"], 1),
    ("会议在 2025年3月14日 下午 3:30。", True, "zh", ["二零二五年三月十四日"], ["2025"], 1),
    ("我用iPhone打了3个电话。", False, "zh", ["3个电话"], ["三"], 1),
    (TRAIN + "你好，今天天气不错。", True, "zh", ["你好，今天天气不错"], ["assistant"], 1),
    ("你好，再见<|endofprompt|>", True, "zh", ["你好，再见"], [], 1),
    ("a<|endofprompt|>b<|endofprompt|>今天很好", True, "zh", ["今天很好"], ["a", "b"], 1),
    ("一" * 200, True, "zh", [], [], 3),
    ("word " * 150, True, "en", ["word"], [], 2),
    ("一二三四五六七八九十" * 20, False, "zh", [], [], 3),
    ("Hello there.\nSecond line.", True, "en", ["Hello there", "Second line"], [], 1),
]


@pytest.mark.parametrize(("text", "frontend", "lang", "has", "hasnt", "min_segs"), CASES)
def test_text_rules(
    text: str, frontend: bool, lang: str, has: list[str], hasnt: list[str], min_segs: int
) -> None:
    utt = plan_utterance(text, TRAIN, text_frontend=frontend)
    assert utt.lang == lang
    assert len(utt.segments) >= min_segs
    joined = "".join(utt.segments)
    for s in has:
        assert s in joined
    for s in hasnt:
        assert s not in joined
    for seg, tts in zip(utt.segments, utt.tts_texts, strict=True):
        assert tts == TRAIN + seg
        assert tts.count(MARKER) == 1  # exactly one marker, whatever was typed
        assert MARKER not in seg
        assert count_units(seg) <= 80  # never an over-long segment


def test_overlong_sentence_without_punctuation_is_cut_evenly() -> None:
    utt = plan_utterance("一" * 200, TRAIN)
    sizes = [count_units(s.rstrip("。")) for s in utt.segments]
    assert sum(sizes) == 200
    assert max(sizes) <= 80 and min(sizes) >= 40


def test_long_paragraph_splits_at_sentences() -> None:
    para = "今天天气很好，我们去公园散步。" * 12
    utt = plan_utterance(para, TRAIN)
    assert len(utt.segments) >= 2
    assert all(s.endswith("。") for s in utt.segments)


@pytest.mark.parametrize(
    ("preset", "prompt", "expected"),
    [
        (None, None, TRAIN),
        ("neutral", None, TRAIN),
        ("NEUTRAL", None, TRAIN),
        ("hype", None, HYPE_INSTRUCT),
        (None, "温柔地说", "温柔地说" + MARKER),
        (None, "温柔地说" + MARKER, "温柔地说" + MARKER),
        (None, "温柔" + MARKER + "地说" + MARKER, "温柔地说" + MARKER),
        (None, "", MARKER),
        ("hype", "慢一点", "慢一点" + MARKER),  # the prompt text wins over a preset
    ],
)
def test_instruct(preset: str | None, prompt: str | None, expected: str) -> None:
    got = resolve_instruct(TRAIN, preset, prompt)
    assert got == expected
    assert got.count(MARKER) == 1 and got.endswith(MARKER)


def test_hype_preset_is_the_notes_one() -> None:
    assert HYPE_INSTRUCT == "马头有大！马头来啦！<|endofprompt|>"
    utt = plan_utterance("冲啊", resolve_instruct(TRAIN, "hype"))
    assert utt.tts_texts == ["马头有大！马头来啦！<|endofprompt|>冲啊。"]


def test_custom_training_instruct_is_the_default() -> None:
    custom = "请用自然的语气说话。" + MARKER
    assert resolve_instruct(custom) == custom
    assert resolve_instruct("no marker here") == "no marker here" + MARKER


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_instruct(TRAIN, "angry")


def test_instruct_without_marker_is_fixed_in_plan() -> None:
    utt = plan_utterance("你好", "You are a helpful assistant.")
    assert utt.tts_texts == [TRAIN + "你好。"]


def test_inline_instruct_is_dropped_with_a_note() -> None:
    utt = plan_utterance("马头有大！<|endofprompt|>你好", TRAIN)
    assert utt.body == "你好"
    assert utt.notes and "--prompt-text" in utt.notes[0]
    # The same instruct as the chosen one: removed silently.
    assert plan_utterance(TRAIN + "你好", TRAIN).notes == []


@pytest.mark.parametrize("text", ["", "   ", "。。！！", "……", "<|endofprompt|>", "?!", "🙂🙂"])
def test_nothing_to_say(text: str) -> None:
    with pytest.raises(InputError) as e:
        plan_utterance(text, TRAIN)
    assert "\n" not in e.value.one_line()


def test_empty_list() -> None:
    with pytest.raises(InputError, match="empty"):
        plan_texts([], TRAIN)


def test_strip_markers() -> None:
    assert strip_markers("你好") == ("你好", None)
    assert strip_markers(TRAIN + "你好") == ("你好", "You are a helpful assistant.")
    assert strip_markers("你好" + MARKER) == ("你好", None)
    assert normalize_instruct("  x  ") == "x" + MARKER


def test_split_input() -> None:
    text = "\ufeff第一行\r\n\r\n  second line \nthird\n\n\n你好\n世界\n"
    assert split_input(text) == ["第一行", "second line", "third", "你好", "世界"]
    assert split_input(text, "paragraph") == ["第一行", "second line third", "你好世界"]
    assert split_input("  \n\n ") == []
