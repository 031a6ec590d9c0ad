"""Text normalization, ASR hallucination flags and sentence splitting for synthesis.

Mirrors upstream CosyVoice's text frontend (``cosyvoice/cli/frontend.py`` ``text_normalize``):
wetext TN for zh (``remove_erhua=False``) and en, the zh clean-ups that follow it (blanks between
Chinese characters, ``²``/``³``, brackets, ``.`` -> ``。``), then ``split_paragraph`` with
``token_max_n=80, token_min_n=60, merge_len=20`` and punctuation-only pieces dropped.

Where VoiceLab differs on purpose:

* numbers with thousands separators (``1,234``) and full-width digits/letters (``１２３``) are
  made plain first, since wetext reads ``1,234`` as two numbers and leaves ``５０％`` alone;
* traditional Chinese is converted to simplified (Whisper often writes traditional);
* :func:`split_for_tts` never returns a piece over ``max_len`` (upstream keeps a long sentence
  whole): a sentence too long is cut at commas, then at spaces, then between characters;
* lengths are counted in *units* for both languages, an estimate of the Qwen BPE token count
  upstream measures: one per CJK character, one per Latin word or number, one per punctuation
  mark (upstream counts characters for zh and tokenizer tokens for en).
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from functools import lru_cache
from typing import Any

log = logging.getLogger(__name__)

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_KANA = "\u3040-\u30ff"
_HANGUL = "\uac00-\ud7af"
_CJK_CHAR = re.compile(f"[{_HAN}{_KANA}{_HANGUL}]")
_HAN_RE = re.compile(f"[{_HAN}]")
_KANA_RE = re.compile(f"[{_KANA}]")
_HANGUL_RE = re.compile(f"[{_HANGUL}]")
_LATIN_WORD = re.compile(r"[A-Za-z\u00c0-\u024f]+(?:'[A-Za-z]+)?")
# One length unit: a CJK character, a Latin word or number, or any other visible character.
_UNIT = re.compile(f"[{_HAN}{_KANA}{_HANGUL}]|[0-9A-Za-z\u00c0-\u024f]+(?:'[A-Za-z]+)?|[^\\s]")


# ---------------------------------------------------------------------------------------------
# language and script


def detect_language(text: str) -> str:
    """Guess the language of ``text`` by script share: ``zh``, ``en``, ``ja``, ``ko`` or ``und``.

    Chinese characters are weighed against Latin *words* (a Chinese character carries about as
    much as a word), so ``"我用iPhone打电话"`` is zh and ``"这个 meeting is at three"`` is en.
    Kana makes it ja, Hangul ko. Text with neither (digits, punctuation) is ``und``.
    """
    han = len(_HAN_RE.findall(text))
    kana = len(_KANA_RE.findall(text))
    hangul = len(_HANGUL_RE.findall(text))
    latin = len(_LATIN_WORD.findall(text))
    if kana and kana + han >= latin and kana * 5 >= han:
        # Japanese mixes kanji and kana; a few kana in Chinese text (rare) do not make it ja.
        return "ja"
    if hangul and hangul >= max(han, latin):
        return "ko"
    if han and han >= latin:
        return "zh"
    if latin:
        return "en"
    return "zh" if han else "und"


@lru_cache(maxsize=1)
def _t2s() -> Any:
    from opencc import OpenCC

    return OpenCC("t2s")


def to_simplified(text: str) -> str:
    """Traditional Chinese to simplified (OpenCC ``t2s``); other text passes through."""
    if not text or not _HAN_RE.search(text):
        return text
    return _t2s().convert(text)


# ---------------------------------------------------------------------------------------------
# normalization

# Full-width ASCII letters, digits and the symbols TN reads (％ ＋ － ＄ ...), but not the
# full-width punctuation Chinese text uses (，！？；：（）), which must stay as it is.
_FULLWIDTH = {c: chr(c - 0xFEE0) for c in range(0xFF01, 0xFF5F) if chr(c) not in "，！？；：（）"}
_FULLWIDTH[0x3000] = " "
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u200b-\u200f\ufeff]")
_SPACES = re.compile(r"[ \t\r\f\v]+")
_ZH_TRAILING_COMMA = re.compile(r"[，,、]+$")
_LETTER_HYPHEN = re.compile(r"(?<=[A-Za-z])-(?=\d)")


def clean_whitespace(text: str) -> str:
    """Drop control and zero-width characters, turn newlines and runs of blanks into one space."""
    text = _CONTROL.sub("", text.replace("\n", " "))
    return _SPACES.sub(" ", text).strip()


def _prepare(text: str) -> str:
    text = text.translate(_FULLWIDTH)
    text = _THOUSANDS.sub("", text)
    return clean_whitespace(unicodedata.normalize("NFC", text))


@lru_cache(maxsize=4)
def _normalizer(lang: str) -> Any:
    from wetext import Normalizer

    # Upstream keeps erhua for zh (frontend.py: Normalizer(remove_erhua=False)).
    if lang == "zh":
        return Normalizer(lang="zh", operator="tn", remove_erhua=False)
    return Normalizer(lang=lang, operator="tn")


def _wetext(text: str, lang: str) -> str | None:
    try:
        return _normalizer(lang).normalize(text)
    except Exception as e:  # wetext asserts or fails on odd input; normalization must never raise
        log.debug("wetext %s could not normalize %r: %s", lang, text[:80], e)
        return None


def _remove_blank_between_cjk(text: str) -> str:
    # Upstream's replace_blank: keep a space only between two ASCII non-blank characters.
    out = []
    for i, c in enumerate(text):
        if c == " ":
            prev = text[i - 1] if i else ""
            nxt = text[i + 1] if i + 1 < len(text) else ""
            if not (prev.isascii() and prev != " " and nxt.isascii() and nxt != " "):
                continue
        out.append(c)
    return "".join(out)


def _zh_cleanup(text: str) -> str:
    text = _remove_blank_between_cjk(text)
    text = text.replace("²", "平方").replace("³", "立方")
    # Upstream turns every "." into "。"; only do it where it ends a sentence, not inside
    # "example.com" or "3.5" (TN spells decimals, but a failed TN leaves them).
    text = re.sub(r"\.(?=\s|$|[^\x00-\x7f])", "。", text)
    text = text.replace(" - ", "，")
    for b in ("（", "）", "【", "】", "`"):
        text = text.replace(b, "")
    text = text.replace("——", " ")
    return _ZH_TRAILING_COMMA.sub("。", text).strip()


def normalize(text: str, lang: str | None = None, simplify: bool = True) -> str:
    """Normalize text for training and synthesis: numbers, dates, units and symbols in words.

    ``lang`` picks the normalizer (``zh`` or ``en``; others only get whitespace clean-up);
    ``None`` detects it with :func:`detect_language`. zh text is converted to simplified first
    when ``simplify``. If wetext cannot handle the text with the chosen language, the other one
    is tried, then the text is returned cleaned but otherwise unchanged: this never raises.
    """
    if not text:
        return ""
    text = _prepare(text)
    if not text:
        return ""
    # Text with no letters at all ("50%") takes the en normalizer, as upstream does for any text
    # without Chinese characters.
    lang = lang or detect_language(text)
    if lang == "und":
        lang = "en"
    if simplify and _HAN_RE.search(text):
        text = to_simplified(text)
    if lang not in ("zh", "en"):
        return text
    if lang == "zh":
        # zh TN reads "COVID-19" as "COVID负十九": a hyphen after a letter is no minus sign.
        text = _LETTER_HYPHEN.sub(" ", text)
    out = _wetext(text, lang)
    if out is None:
        other = "en" if lang == "zh" else "zh"
        out = _wetext(text, other)
        if out is not None:
            lang = other
    if out is None:
        out = text
    out = clean_whitespace(out)
    if lang == "zh" or _HAN_RE.search(out):
        out = _zh_cleanup(out)
    return out


# ---------------------------------------------------------------------------------------------
# hallucinations

_PUNCT_ONLY = re.compile(r"^[\W_]*$")

_SUBTITLE_CREDITS = [
    r"字幕[由:：\s]*.{0,20}提供",
    r"字幕(?:制作|製作|组|組|翻译|翻譯|校对|校對|志愿者|志願者)",
    r"(?:中文|简体|繁体|簡體|繁體)字幕",
    r"amara\.org",
    r"subtitles?\s+(?:by|provided|created)",
    r"(?:transcribed|translated|captioned)\s+by",
    r"优优独播剧场|優優獨播劇場|yoyo television",
    r"明镜与点点栏目|明鏡與點點欄目",
    r"由\s*amara",
]
_LIKE_SUBSCRIBE = [
    r"不吝(?:点赞|點贊|點讚)",
    r"点赞.{0,4}订阅|點[贊讚].{0,4}訂閱",
    r"订阅.{0,6}(?:频道|转发|打赏)|訂閱.{0,6}(?:頻道|轉發|打賞)",
    r"like\s+(?:and|&)\s+subscribe",
    r"subscribe\s+to\s+(?:my|our|the)\s+channel",
    r"(?:don'?t|do not)\s+forget\s+to\s+(?:like|subscribe)",
    r"hit\s+the\s+bell",
]
_THANKS = [
    r"(?:谢谢|謝謝|感谢|感謝)(?:大家|您|你们|你們)?的?(?:观看|觀看|收看|收听|收聽)",
    r"thank(?:s| you)\s+(?:so much\s+)?for\s+(?:watching|listening)",
]
# Whisper echoes its initial prompt on near-silence; these are VoiceLab's default prompts.
_PROMPT_ECHO = [r"以下是普通话的句子", r"使用简体中文和标点符号"]


def _any(patterns: list[str], text: str) -> bool:
    return any(re.search(p, text, flags=re.IGNORECASE) for p in patterns)


def _strip_matches(patterns: list[str], text: str) -> str:
    for p in patterns:
        text = re.sub(p, "", text, flags=re.IGNORECASE)
    return text


def _repetition(text: str) -> bool:
    """True when a phrase repeats back to back: 1 unit x6, 2 units x4, 3+ units x3.

    Units are CJK characters and Latin words, punctuation ignored. The thresholds leave room
    for "对对对" or "no no no" and catch Whisper's loops ("谢谢谢谢谢谢", "Sorry. Sorry. Sorry.").
    """
    units = [u.lower() for u in _UNIT.findall(text) if not _PUNCT_ONLY.match(u)]
    n = len(units)
    for size in range(1, n // 3 + 1):
        need = 6 if size == 1 else 4 if size == 2 else 3
        if size * need > n:
            continue
        for start in range(n - size * need + 1):
            unit = units[start : start + size]
            reps = 1
            pos = start + size
            while units[pos : pos + size] == unit:
                reps += 1
                pos += size
                if reps >= need:
                    return True
    return False


def hallucination_flags(text: str) -> list[str]:
    """Reason codes for text that looks like a known ASR hallucination, worst first.

    ``empty``, ``punctuation_only``, ``subtitle_credit`` (``字幕由…提供``, ``Amara.org``),
    ``like_subscribe`` (``请不吝点赞 订阅 转发 打赏``, ``please like and subscribe``),
    ``thanks_for_watching`` (``谢谢观看``, ``thanks for watching``: only when that is nearly all
    the text, since a speaker may say it), ``prompt_echo`` (the ASR initial prompt came back),
    ``repetition``. These are flags for QC and review; whether to drop is decided there.
    """
    stripped = clean_whitespace(text or "")
    if not stripped:
        return ["empty"]
    if _PUNCT_ONLY.match(stripped):
        return ["punctuation_only"]
    flags: list[str] = []
    simple = to_simplified(stripped)
    if _any(_SUBTITLE_CREDITS, simple):
        flags.append("subtitle_credit")
    if _any(_LIKE_SUBSCRIBE, simple):
        flags.append("like_subscribe")
    if _any(_THANKS, simple):
        rest = _strip_matches(_THANKS, simple)
        if count_units(re.sub(r"[\W_]", " ", rest)) <= 3:
            flags.append("thanks_for_watching")
    if _any(_PROMPT_ECHO, simple):
        flags.append("prompt_echo")
    if _repetition(simple):
        flags.append("repetition")
    return flags


# ---------------------------------------------------------------------------------------------
# splitting for synthesis

_SENT_END = set("。！？；!?;…")
_CLAUSE = set("，,、：:—～~")
_CLOSERS = set("\"'”’」』）)】]》>")


def count_units(text: str) -> int:
    """Length in units: CJK characters, Latin words/numbers and punctuation marks count 1 each.

    This estimates the Qwen BPE token count upstream measures (for zh it is close to upstream's
    character count, for ordinary English within about 20 % of the token count).
    """
    return len(_UNIT.findall(text))


def _units(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _UNIT.finditer(text)]


def _split_at(text: str, marks: set[str], period: bool) -> list[str]:
    """Cut ``text`` after each mark in ``marks`` (plus closing quotes/brackets that follow it).

    With ``period``, ``.`` ends a sentence when followed by a blank, the end or a non-ASCII
    character, so ``3.5`` and ``example.com`` stay whole.
    """
    pieces, start, i, n = [], 0, 0, len(text)
    while i < n:
        c = text[i]
        end = c in marks or (
            period
            and c == "."
            and (i + 1 == n or not text[i + 1].isascii() or text[i + 1].isspace())
        )
        if end:
            j = i + 1
            while j < n and (text[j] in marks or text[j] == "." or text[j] in _CLOSERS):
                j += 1
            pieces.append(text[start:j])
            start = i = j
            continue
        i += 1
    if start < n:
        pieces.append(text[start:])
    return [p.strip() for p in pieces if p.strip()]


def _hard_cut(text: str, max_len: int) -> list[str]:
    """Cut a piece with no usable punctuation into near-equal parts of at most ``max_len`` units,
    preferring blanks (between words) over cuts between two characters."""
    spans = _units(text)
    out, s = [], 0
    while len(spans) - s > max_len:
        left = len(spans) - s
        target = math.ceil(left / math.ceil(left / max_len))
        best = None
        for k in range(s + 1, s + max_len + 1):
            blank = spans[k][0] > spans[k - 1][1]  # a blank between unit k-1 and k
            if blank and (best is None or abs(k - s - target) < abs(best - s - target)):
                best = k
        # A blank far from the target would leave a lopsided pair; cut between characters then.
        cut = best if best is not None and abs(best - s - target) <= target // 3 else s + target
        out.append(text[spans[s][0] : spans[cut][0]].strip())
        s = cut
    out.append(text[spans[s][0] :].strip())
    return [p for p in out if p]


def _join(a: str, b: str) -> str:
    if not a:
        return b
    if not b:
        return a
    # A blank between Latin text (or after Latin punctuation), none between CJK characters.
    if _CJK_CHAR.match(a[-1]) or _CJK_CHAR.match(b[0]) or not a[-1].isascii():
        return a + b
    return a + " " + b


def split_for_tts(
    text: str,
    lang: str | None = None,
    max_len: int = 80,
    min_len: int = 60,
    merge_len: int = 20,
) -> list[str]:
    """Split text into pieces for synthesis, like upstream's ``split_paragraph``.

    Sentences (ending in ``。！？；`` / ``.!?;``) are packed greedily into pieces of at most
    ``max_len`` units (:func:`count_units`); a sentence that does not fit starts the next piece.
    A sentence longer than ``max_len`` is cut at commas, a clause still too long at blanks
    (between words) or, for text without blanks, between characters, into near-equal parts.
    Upstream lets a piece run past ``max_len`` while it is shorter than ``min_len``; here
    ``min_len`` instead decides whether a short current piece takes the first clauses of an
    over-long sentence that follows. A piece under ``merge_len`` joins a neighbour when the
    result fits. Punctuation-only pieces are dropped. No piece is longer than ``max_len`` units.

    The text should already be normalized (:func:`normalize`); ``lang`` (detected when None)
    only decides the punctuation added at the very end (``。`` or ``.``), as upstream does.
    """
    max_len = max(1, int(max_len))
    min_len = max(0, min(int(min_len), max_len))
    text = clean_whitespace(text or "")
    if not text or _PUNCT_ONLY.match(text):
        return []
    lang = lang or detect_language(text)
    if text[-1] not in _SENT_END and text[-1] not in _CLOSERS and text[-1] != ".":
        text += "。" if lang in ("zh", "ja") else "."

    # Each sentence becomes a list of clauses of at most max_len units.
    sentences: list[list[str]] = []
    for sent in _split_at(text, _SENT_END, period=True):
        if _PUNCT_ONLY.match(sent):  # "……" or "!!" on its own: dropped, as upstream does
            continue
        clauses: list[str] = []
        parts = [sent] if count_units(sent) <= max_len else _split_at(sent, _CLAUSE, period=False)
        for part in parts:
            if _PUNCT_ONLY.match(part) and clauses and count_units(clauses[-1] + part) <= max_len:
                clauses[-1] += part
            elif count_units(part) <= max_len:
                clauses.append(part)
            else:
                clauses.extend(_hard_cut(part, max_len))
        if clauses:
            sentences.append(clauses)

    pieces: list[str] = []
    cur = ""

    def fits(a: str, b: str) -> bool:
        return count_units(_join(a, b)) <= max_len

    for clauses in sentences:
        whole = clauses[0]
        for c in clauses[1:]:
            whole = _join(whole, c)
        if count_units(whole) <= max_len:
            if cur and not fits(cur, whole):
                pieces.append(cur)  # end at a sentence end rather than mid-sentence
                cur = ""
            cur = _join(cur, whole)
            continue
        # A sentence over max_len is cut at commas anyway: a current piece shorter than
        # min_len is filled with its first clauses instead of being left short.
        if cur and count_units(cur) >= min_len:
            pieces.append(cur)
            cur = ""
        for c in clauses:
            if cur and not fits(cur, c):
                pieces.append(cur)
                cur = ""
            cur = _join(cur, c)
    if cur:
        pieces.append(cur)

    # Merge tiny pieces into a neighbour where the result still fits.
    merged: list[str] = []
    for p in pieces:
        tiny = merged and min(count_units(p), count_units(merged[-1])) < merge_len
        if tiny and fits(merged[-1], p):
            merged[-1] = _join(merged[-1], p)
            continue
        merged.append(p)
    return [p for p in merged if not _PUNCT_ONLY.match(p)]
