"""Text normalization (real wetext FSTs and OpenCC), hallucination flags and TTS splitting."""

from __future__ import annotations

import random
import re

import pytest

from voicelab.blocks.textnorm import (
    count_units,
    detect_language,
    hallucination_flags,
    normalize,
    split_for_tts,
    to_simplified,
)


def _content(text: str) -> str:
    """Text without blanks and punctuation: what splitting must never lose."""
    return re.sub(r"[\W_]", "", text)


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("今天天气很好", "zh"),
        ("我用iPhone打电话", "zh"),
        ("這是繁體中文", "zh"),
        ("I have 23 apples", "en"),
        ("这个 meeting is at three", "en"),
        ("こんにちは、世界", "ja"),
        ("東京に行きました", "ja"),
        ("안녕하세요", "ko"),
        ("12345", "und"),
        ("", "und"),
        ("...!?", "und"),
    ],
)
def test_detect_language(text: str, lang: str) -> None:
    assert detect_language(text) == lang


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("這是繁體中文", "这是繁体中文"),
        ("開會時間", "开会时间"),
        ("简体不变", "简体不变"),
        ("English stays", "English stays"),
        ("", ""),
    ],
)
def test_to_simplified(text: str, expected: str) -> None:
    assert to_simplified(text) == expected


@pytest.mark.parametrize(
    ("text", "lang", "expected"),
    [
        # zh: dates, percent, decimals with units, thousands separators, time, phone numbers
        ("2024年3月5日", None, "二零二四年三月五日"),
        ("增长了50%", None, "增长了百分之五十"),
        ("重3.5公斤", None, "重三点五公斤"),
        ("它卖出了1,234,567台", None, "它卖出了一百二十三万四千五百六十七台"),
        ("3:30开会", None, "三点三十分开会"),
        ("温度是-3.5°C", None, "温度是负三点五摄氏度"),
        ("面积20m²", None, "面积二十平方米"),
        ("哪儿好玩", None, "哪儿好玩"),  # erhua kept, as upstream
        # traditional to simplified, with numbers
        ("這是繁體中文，開會時間是3點。", None, "这是繁体中文，开会时间是三点。"),
        # full-width digits and symbols
        ("增长了５０％", None, "增长了百分之五十"),
        # mixed zh/en: zh normalizer, English words kept, no blank between CJK and Latin
        ("我用iPhone 15打电话", None, "我用iPhone十五打电话"),
        ("COVID-19疫情", None, "COVID十九疫情"),  # not "负十九"
        # upstream's zh clean-ups: brackets removed, trailing comma -> 。
        ("（注意）今天，", "zh", "注意今天。"),
        # en
        ("I have 23 apples", None, "I have twenty three apples"),
        ("I have 23 apples", "en", "I have twenty three apples"),
        (
            "The 1st and 2nd of 10 items cost 12.5% more in 1999.",
            None,
            "The first and second of ten items cost twelve point five percent more in "
            "nineteen ninety nine.",
        ),
        ("50%", None, "fifty percent"),
        # whitespace clean-up
        ("  Hello   world \n\t ok  ", None, "Hello world ok"),
        ("  你好 \n 世界  ", None, "你好世界"),
        ("Ｈｅｌｌｏ\u3000ｗｏｒｌｄ", None, "Hello world"),
        ("", None, ""),
        ("   ", None, ""),
    ],
)
def test_normalize_table(text: str, lang: str | None, expected: str) -> None:
    assert normalize(text, lang) == expected


def test_normalize_mixed_en_dominant() -> None:
    out = normalize("这个 meeting is at 3pm")
    assert "three" in out and "meeting" in out and "3" not in out


def test_normalize_keeps_traditional_when_asked() -> None:
    assert normalize("這是繁體", "zh", simplify=False) == "這是繁體"


@pytest.mark.parametrize(
    "text",
    ["...", "!!!", "\x00\u200b", "<|endofprompt|>", "🙂 ok", "3.5.6.7", "--", "%%%", "年月日"],
)
def test_normalize_never_raises_on_odd_text(text: str) -> None:
    for lang in (None, "zh", "en", "ja", "xx"):
        assert isinstance(normalize(text, lang), str)


def test_normalize_fuzz_never_raises() -> None:
    rng = random.Random(1)
    alphabet = "你好世界的是了0123456789.,，。！？%$年月日 abcXYZ-:/°²\n\t繁體"
    for _ in range(150):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        assert isinstance(normalize(s), str)


@pytest.mark.parametrize(
    ("text", "flags"),
    [
        ("字幕由Amara.org社区提供", ["subtitle_credit"]),
        ("字幕由 Amara.org 社群提供", ["subtitle_credit"]),
        ("中文字幕志愿者 李宗盛", ["subtitle_credit"]),
        ("Subtitles by the Amara.org community", ["subtitle_credit"]),
        ("请不吝点赞 订阅 转发 打赏支持明镜与点点栏目", ["subtitle_credit", "like_subscribe"]),
        ("請不吝點贊 訂閱 轉發 打賞", ["like_subscribe"]),
        ("Please like and subscribe!", ["like_subscribe"]),
        ("Don't forget to subscribe to my channel.", ["like_subscribe"]),
        ("谢谢观看", ["thanks_for_watching"]),
        ("谢谢大家观看！", ["thanks_for_watching"]),
        ("謝謝觀看。", ["thanks_for_watching"]),
        ("Thanks for watching!", ["thanks_for_watching"]),
        ("Thank you for watching.", ["thanks_for_watching"]),
        # said inside a real sentence: not flagged
        ("今天我们讲了很多内容，最后谢谢观看", []),
        ("以下是普通话的句子，使用简体中文和标点符号。", ["prompt_echo"]),
        ("谢谢谢谢谢谢谢", ["repetition"]),
        ("我爱你我爱你我爱你", ["repetition"]),
        ("I am sorry. I am sorry. I am sorry.", ["repetition"]),
        ("the the the the the the", ["repetition"]),
        ("好的好的好的好的", ["repetition"]),
        ("对对对", []),
        ("好的，好的。", []),
        ("no no no", []),
        ("", ["empty"]),
        ("   ", ["empty"]),
        ("!!!", ["punctuation_only"]),
        ("。，、", ["punctuation_only"]),
        ("正常的一句话。", []),
        ("The quick brown fox jumps over the lazy dog.", []),
    ],
)
def test_hallucination_flags(text: str, flags: list[str]) -> None:
    assert hallucination_flags(text) == flags


ZH_PARAGRAPH = (
    "人工智能正在改变我们的生活方式。从智能手机到自动驾驶汽车，从语音助手到医疗诊断，"
    "人工智能技术已经渗透到各个领域。专家预测，未来十年内，人工智能将创造数百万个新的就业岗位，"
    "同时也会取代一些传统工作。我们需要思考如何适应这种变化？教育系统应该如何改革？"
    "这些都是值得深入探讨的问题！政府、企业和个人都需要为此做好准备；只有这样，"
    "我们才能在变革中抓住机遇。"
)
EN_PARAGRAPH = (
    "Artificial intelligence is changing the way we live. From smartphones to self driving "
    "cars, from voice assistants to medical diagnosis, it has reached every field. Experts "
    "predict that within ten years, it will create millions of new jobs, while also replacing "
    "some traditional work. How should we adapt to this change? How should schools and "
    "universities reform what they teach? These are questions worth exploring in depth! "
    "Governments, companies and people all need to prepare; only then can we seize the "
    "opportunities that come with change."
)


def _check_pieces(text: str, pieces: list[str], max_len: int) -> None:
    assert pieces
    assert all(count_units(p) <= max_len for p in pieces), [count_units(p) for p in pieces]
    assert _content("".join(pieces)) == _content(text)


def test_split_zh_paragraph_at_sentences() -> None:
    pieces = split_for_tts(ZH_PARAGRAPH)
    _check_pieces(ZH_PARAGRAPH, pieces, 80)
    assert len(pieces) >= 2
    assert all(p[-1] in "。！？；" for p in pieces), pieces  # sentence ends, not commas
    assert "".join(pieces) == ZH_PARAGRAPH


def test_split_en_paragraph_at_sentences() -> None:
    pieces = split_for_tts(EN_PARAGRAPH)
    _check_pieces(EN_PARAGRAPH, pieces, 80)
    assert len(pieces) >= 2
    assert " ".join(pieces) == EN_PARAGRAPH
    assert all(p[-1] in ".!?;" for p in pieces), pieces


def test_split_smaller_limits_prefer_sentence_ends() -> None:
    pieces = split_for_tts(EN_PARAGRAPH, max_len=30, min_len=20, merge_len=8)
    _check_pieces(EN_PARAGRAPH, pieces, 30)
    assert sum(p.endswith((".", "?", "!", ";")) for p in pieces) >= len(pieces) - 2


def test_split_overlong_zh_without_punctuation() -> None:
    text = "这是一个非常长的句子没有任何标点符号" * 8  # 144 characters
    pieces = split_for_tts(text)
    _check_pieces(text, pieces, 80)
    assert len(pieces) == 2
    assert abs(count_units(pieces[0]) - count_units(pieces[1])) <= 2  # near-equal halves
    assert "".join(pieces) == text + "。"


def test_split_overlong_en_without_punctuation_cuts_between_words() -> None:
    words = [f"word{i}" for i in range(170)]
    text = " ".join(words)
    pieces = split_for_tts(text)
    _check_pieces(text, pieces, 80)
    assert len(pieces) == 3
    rejoined = " ".join(pieces).rstrip(".").split(" ")
    assert rejoined == words  # no word cut in two


def test_split_overlong_sentence_cut_at_commas_first() -> None:
    clause = "我们今天讨论的问题非常重要而且需要很长时间"  # 21 characters
    text = "，".join([clause] * 6) + "。"
    pieces = split_for_tts(text)
    _check_pieces(text, pieces, 80)
    assert all(p.endswith(("，", "。")) for p in pieces), pieces


@pytest.mark.parametrize("text", ["", "   ", "。。。！！", "...", "!?", "……"])
def test_split_punctuation_only(text: str) -> None:
    assert split_for_tts(text) == []


def test_split_drops_punctuation_only_pieces_and_merges_tiny_tail() -> None:
    text = "这是第一句话，内容比较长一些，大概有三十个字左右吧。 …… 好。"
    assert split_for_tts(text) == ["这是第一句话，内容比较长一些，大概有三十个字左右吧。好。"]
    # punctuation right after a sentence stays with it
    assert split_for_tts("真的吗？！……") == ["真的吗？！……"]


def test_split_short_text_gets_final_punctuation() -> None:
    assert split_for_tts("你好") == ["你好。"]
    assert split_for_tts("hello there") == ["hello there."]
    assert split_for_tts("Hello there! How are you") == ["Hello there! How are you."]


def test_split_never_over_max_and_loses_nothing_fuzz() -> None:
    rng = random.Random(2)
    alphabet = "你好世界的是了0123456789.,，。！？；%$ abcXYZ-:/°\n繁體"
    for max_len in (3, 8, 20, 80):
        for _ in range(60):
            s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))
            pieces = split_for_tts(s, max_len=max_len, min_len=max_len // 2, merge_len=max_len // 4)
            assert all(0 < count_units(p) <= max_len for p in pieces), (s, pieces)
            assert _content("".join(pieces)) == _content(s), (s, pieces)


def test_count_units() -> None:
    assert count_units("你好，世界。") == 6
    assert count_units("Hello, world.") == 4
    assert count_units("我用iPhone打电话") == 6
    assert count_units("don't stop") == 2
