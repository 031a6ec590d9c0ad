"""The test sentences: the built-in set (Chinese and English, numbers, dates, polyphones, mixed,
a long paragraph) and a user's file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from voicelab.errors import InputError
from voicelab.paths import safe_name, to_local_path

if TYPE_CHECKING:
    pass


# (id, text): Chinese and English, numbers, dates, polyphones, mixed, a long paragraph.
DEFAULT_SENTENCES: tuple[tuple[str, str], ...] = (
    ("zh-greeting", "你好，欢迎收听。这是用我自己的声音训练出来的模型。"),
    ("en-greeting", "Hello, this is my own voice, fine-tuned with VoiceLab."),
    ("zh-numbers", "这台电脑原价 3999 元，打八五折以后只要 3399.15 元，省了将近百分之十五。"),
    ("zh-date", "会议定在 2025年3月14日 下午 3:30，地点是 5 楼 502 会议室。"),
    ("zh-polyphone-1", "我去银行办事，出来以后沿着河边行走了一会儿。"),
    ("zh-polyphone-2", "这件事很重要，请不要重复犯同样的错误，重新检查一遍。"),
    ("mixed", "今天我们用 Python 和 CUDA 训练了一个 TTS 模型，效果 very good！"),
    (
        "en-numbers",
        "On March 14, 2025, the 3 engineers shipped version 2.5 at 9:30 in the morning.",
    ),
    (
        "zh-paragraph",
        "那天傍晚，雨刚停，街上的行人渐渐多了起来。我沿着熟悉的小路往家走，路边的梧桐叶还在滴水，"
        "空气里有泥土和青草的味道。走到巷口的时候，我忽然听见有人在叫我的名字，回头一看，"
        "原来是多年不见的老同学。我们站在路灯下聊了很久，从学生时代的趣事，一直聊到这些年各自的变化，"
        "直到夜色深了，才依依不舍地道别。",
    ),
)

GRID = (("neutral", 1.0), ("neutral", 1.1), ("hype", 1.0), ("hype", 1.1))

VOICE_TOKENS = ("avg", "voice", "exported")

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class Sentence:
    id: str
    text: str


# ---- sentences and variants -------------------------------------------------------------------
def default_sentences() -> list[Sentence]:
    return [Sentence(i, t) for i, t in DEFAULT_SENTENCES]


def read_sentences(path: str | Path) -> list[Sentence]:
    """One sentence per line (``#`` comments and blank lines skipped); ``id<TAB>text`` names it."""
    p = to_local_path(path)
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError as e:
        raise InputError(f"sentences file {p} does not exist", "check the path") from e
    except UnicodeDecodeError as e:
        raise InputError(f"sentences file {p} is not UTF-8 text", "save it as UTF-8") from e
    out: list[Sentence] = []
    seen: set[str] = set()
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        sid, sep, text = line.partition("\t")
        if not sep:
            sid, text = f"s{n:02d}", line
        sid = safe_name(sid.strip(), 40)
        if sid in seen:
            sid = f"{sid}-{n}"
        seen.add(sid)
        out.append(Sentence(sid, text.strip()))
    if not out:
        raise InputError(f"sentences file {p} has no sentences", "write one sentence per line")
    return out
