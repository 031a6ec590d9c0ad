"""Text rules for speaking in a CosyVoice 3 SFT voice (pure: no torch, no upstream).

CosyVoice 3's LLM asserts that ``<|endofprompt|>`` is in the text it is given, and upstream's
frontend skips normalization *and* sentence splitting as soon as a text contains ``<|...|>``
(``frontend.py`` ``text_normalize``). An SFT voice has no prompt text, so the marker must be in
``tts_text`` itself. VoiceLab therefore does the frontend's work here, before upstream sees the
text:

1. cut the input into utterances (one per line, or per paragraph);
2. per utterance: drop any ``<|endofprompt|>`` (and the instruct before it) the user typed;
3. normalize (wetext, zh or en, :mod:`voicelab.blocks.textnorm`) unless ``text_frontend`` is off;
4. split into segments of at most 80 units as upstream does, cutting a sentence that is still
   over-long (no punctuation to split at) at commas, blanks or between characters;
5. prefix every segment with the instruct, so that each carries exactly one marker.

The instruct is the training instruct by default (what the voice was fine-tuned with), a preset
(``neutral`` = the training instruct, ``hype`` = the notes' "爆发力" preset), or ``--prompt-text``.

``text_frontend=False`` follows upstream's switch of the same name: no normalization (numbers,
dates and symbols are spoken as the tokenizer reads them). Long text is still split and every
segment still gets the instruct, because upstream cannot do either for a CV3 SFT text.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from voicelab.errors import ConfigError, InputError

MARKER = "<|endofprompt|>"
NEUTRAL = "neutral"
HYPE = "hype"
HYPE_INSTRUCT = "马头有大！马头来啦！" + MARKER
PRESETS: dict[str, str | None] = {
    # None: the voice's own training instruct (workspace.instruct).
    NEUTRAL: None,
    HYPE: HYPE_INSTRUCT,
}
# Segment length limits in textnorm's units (one per CJK character, Latin word or punctuation
# mark: about upstream's characters for zh and BPE tokens for en), upstream's values.
MAX_LEN, MIN_LEN, MERGE_LEN = 80, 60, 20

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_PARA_BREAK = re.compile(r"\n\s*\n")


@dataclass
class Utterance:
    """One input line or paragraph and the texts upstream will be given for it."""

    text: str  # what the user typed (stripped)
    body: str  # the text without any marker or inline instruct
    lang: str  # "zh", "en" (also "ja", "ko": only whitespace is normalized)
    instruct: str  # ends with exactly one MARKER
    segments: list[str] = field(default_factory=list)  # normalized pieces, no instruct
    notes: list[str] = field(default_factory=list)  # what was changed and why (for logs)

    @property
    def tts_texts(self) -> list[str]:
        """What goes to ``inference_sft``: instruct + segment, one marker each."""
        return [self.instruct + seg for seg in self.segments]


# ---- instruct ---------------------------------------------------------------------------------
def normalize_instruct(prompt: str) -> str:
    """A prompt text with exactly one marker, at its end.

    Markers the user typed anywhere are removed and one is appended, so ``"温柔地说"``,
    ``"温柔地说<|endofprompt|>"`` and ``"温柔<|endofprompt|>地说<|endofprompt|>"`` all give
    ``"温柔地说<|endofprompt|>"``. An empty prompt gives the bare marker (the minimal prompt the
    notes' ``infer_sft.py`` injects).
    """
    core = prompt.replace(MARKER, "").strip()
    return core + MARKER


def resolve_instruct(
    training_instruct: str, preset: str | None = None, prompt_text: str | None = None
) -> str:
    """The instruct for every segment: ``prompt_text`` > ``preset`` > the training instruct."""
    if prompt_text is not None:
        return normalize_instruct(prompt_text)
    name = (preset or NEUTRAL).strip().lower()
    if name not in PRESETS:
        raise ConfigError(
            f"unknown preset {preset!r}",
            f"use one of: {', '.join(PRESETS)} (or --prompt-text '...{MARKER}')",
        )
    chosen = PRESETS[name]
    return normalize_instruct(chosen if chosen is not None else training_instruct)


# ---- input -> utterances ----------------------------------------------------------------------
def split_input(text: str, by: str = "line") -> list[str]:
    """Cut input text into utterances: one per non-empty line, or per paragraph.

    Paragraphs are separated by blank lines; the lines inside one are joined (with a space
    between two non-CJK ends, directly otherwise) because a paragraph wrapped in an editor is
    still one thing to say.
    """
    if by not in ("line", "paragraph"):
        raise ValueError(by)
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    if by == "line":
        return [ln.strip() for ln in text.split("\n") if ln.strip()]
    out = []
    for block in _PARA_BREAK.split(text):
        lines = [ln.strip() for ln in block.split("\n") if ln.strip()]
        if lines:
            joined = lines[0]
            for ln in lines[1:]:
                cjk_edge = _CJK.match(joined[-1]) or _CJK.match(ln[0])
                joined += ln if cjk_edge else " " + ln
            out.append(joined)
    return out


def strip_markers(text: str) -> tuple[str, str | None]:
    """(body, inline instruct or None): what the user typed without any ``<|endofprompt|>``.

    ``"You are a helpful assistant.<|endofprompt|>你好"`` -> ``("你好", "You are a helpful
    assistant.")``. With the marker at the very end (``"你好<|endofprompt|>"``) there is nothing
    after it, so the text before it is taken as the body.
    """
    if MARKER not in text:
        return text.strip(), None
    head, _, tail = text.rpartition(MARKER)
    head, tail = head.replace(MARKER, "").strip(), tail.strip()
    if tail:
        return tail, head or None
    return head, None


def is_only_punctuation(text: str) -> bool:
    """True for text with nothing to say: punctuation, symbols and spaces only (or nothing)."""
    return all(unicodedata.category(ch)[0] in "PSZC" for ch in text)


def detect_lang(text: str) -> str:
    """``zh``, ``en``, ``ja`` or ``ko`` (:func:`voicelab.blocks.textnorm.detect_language`); text
    with no letters at all (``"100%"``) is read as English, as upstream does for text without
    Chinese."""
    from voicelab.blocks.textnorm import detect_language

    lang = detect_language(text)
    return "en" if lang == "und" else lang


# ---- segmenting -------------------------------------------------------------------------------
def segment(
    body: str,
    lang: str,
    text_frontend: bool = True,
    max_len: int = MAX_LEN,
    min_len: int = MIN_LEN,
    merge_len: int = MERGE_LEN,
) -> list[str]:
    """Normalize (unless ``text_frontend`` is off) and split one utterance body into segments.

    :func:`voicelab.blocks.textnorm.split_for_tts` packs sentences like upstream's
    ``split_paragraph`` but, unlike it, never returns a piece over ``max_len`` units: a long run
    without sentence punctuation is cut at commas, then blanks, then between characters.
    """
    from voicelab.blocks import textnorm

    text = textnorm.normalize(body, lang) if text_frontend else body
    pieces = textnorm.split_for_tts(
        text, lang, max_len=max_len, min_len=min_len, merge_len=merge_len
    )
    return [p.strip() for p in pieces if p.strip() and not is_only_punctuation(p)]


def plan_utterance(
    text: str,
    instruct: str,
    text_frontend: bool = True,
    max_len: int = MAX_LEN,
    min_len: int = MIN_LEN,
    merge_len: int = MERGE_LEN,
) -> Utterance:
    """Everything :class:`Utterance` needs for one input line; one-line errors for bad text."""
    if MARKER not in instruct or instruct.count(MARKER) != 1 or not instruct.endswith(MARKER):
        instruct = normalize_instruct(instruct)
    raw = text.strip()
    if not raw:
        raise InputError("the text is empty", "give the text to say, e.g. voicelab say '你好'")
    body, inline = strip_markers(raw)
    notes: list[str] = []
    if inline is not None and normalize_instruct(inline) != instruct:
        dropped = f"{inline}{MARKER}"
        notes.append(
            f"removed {dropped!r} from the text; the instruct is {instruct!r}"
            " (use --prompt-text to change it)"
        )
    if not body or is_only_punctuation(body):
        raise InputError(
            f"nothing to say in {raw[:40]!r}: the text has no words, only punctuation or markers",
            "give a text with words in it",
        )
    lang = detect_lang(body)
    segs = segment(body, lang, text_frontend, max_len, min_len, merge_len)
    if not segs:
        raise InputError(
            f"nothing to say in {raw[:40]!r} after normalization", "give a text with words in it"
        )
    return Utterance(text=raw, body=body, lang=lang, instruct=instruct, segments=segs, notes=notes)


def plan_texts(
    texts: list[str],
    instruct: str,
    text_frontend: bool = True,
    max_len: int = MAX_LEN,
) -> list[Utterance]:
    """:func:`plan_utterance` for many lines; an empty list is an error."""
    if not texts:
        raise InputError("the text is empty", "give the text to say, e.g. voicelab say '你好'")
    return [plan_utterance(t, instruct, text_frontend, max_len=max_len) for t in texts]


def read_texts(text: str | None, text_file: str | None, paragraphs: bool) -> list[str]:
    """What to say: ``text`` (``-`` reads stdin) or a UTF-8 ``text_file``, split into lines (or
    paragraphs); one-line errors for both, neither, a missing file or empty text."""
    import sys

    from voicelab.errors import ConfigError, InputError
    from voicelab.paths import to_local_path

    if text is not None and text_file is not None:
        raise ConfigError("give the text or --text-file, not both", None)
    if text_file is not None:
        path = to_local_path(text_file)
        try:
            raw = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError as e:
            raise InputError(f"text file {path} does not exist", "check the path") from e
        except UnicodeDecodeError as e:
            raise InputError(f"text file {path} is not UTF-8", "save it as UTF-8") from e
    elif text == "-":
        raw = sys.stdin.read()
    elif text is not None:
        raw = text
    else:
        raise InputError(
            "no text to say", "voicelab say '你好' (or - for stdin, or --text-file FILE)"
        )
    texts = split_input(raw, "paragraph" if paragraphs else "line")
    if not texts:
        raise InputError("the text is empty", "give the text to say, e.g. voicelab say '你好'")
    return texts
