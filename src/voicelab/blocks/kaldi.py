"""Kaldi-style data dirs as upstream CosyVoice reads them: ``wav.scp``, ``text``, ``utt2spk``,
``spk2utt``, ``instruct``.

Upstream parses every line with ``line.split()`` (key, then the rest): wav paths must be absolute
and free of whitespace, texts have their runs of blanks collapsed, and keys must not contain
whitespace either. :func:`write_kaldi_dir` refuses anything upstream would misread;
:func:`read_kaldi_dir` maps Windows paths (the notes' ``C:\\...`` in wav.scp) to local ones.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from voicelab.blocks.records import Utt
from voicelab.errors import InputError
from voicelab.fsutil import atomic_write_text
from voicelab.paths import has_whitespace, to_local_path

FILES = ("wav.scp", "text", "utt2spk", "spk2utt", "instruct")
_BLANKS = re.compile(r"\s+")


def _one_line(text: str) -> str:
    return _BLANKS.sub(" ", text).strip()


def write_kaldi_dir(dest: str | os.PathLike[str], utts: Iterable[Utt]) -> list[Path]:
    """Write the five files (``instruct`` only when every utterance has one), sorted by id.

    Raises ``ValueError`` for ids or paths upstream would split wrongly: those are bugs, since
    VoiceLab names every clip itself.
    """
    items = sorted(utts, key=lambda u: u.utt)
    dest = Path(dest)
    seen: set[str] = set()
    for u in items:
        if not u.utt or has_whitespace(u.utt) or u.utt in seen:
            raise ValueError(f"bad or duplicate utterance id {u.utt!r}")
        seen.add(u.utt)
        if has_whitespace(u.spk) or not u.spk:
            raise ValueError(f"bad speaker id {u.spk!r}")
        if not Path(u.wav).is_absolute() or has_whitespace(str(u.wav)):
            raise ValueError(f"wav path must be absolute with no whitespace: {u.wav}")
    spk2utt: dict[str, list[str]] = {}
    for u in items:
        spk2utt.setdefault(u.spk, []).append(u.utt)
    files = {
        "wav.scp": "".join(f"{u.utt} {u.wav}\n" for u in items),
        "text": "".join(f"{u.utt} {_one_line(u.text)}\n" for u in items),
        "utt2spk": "".join(f"{u.utt} {u.spk}\n" for u in items),
        "spk2utt": "".join(f"{s} {' '.join(us)}\n" for s, us in sorted(spk2utt.items())),
    }
    if items and all(u.instruct for u in items):
        files["instruct"] = "".join(f"{u.utt} {_one_line(u.instruct or '')}\n" for u in items)
    elif (dest / "instruct").exists():
        (dest / "instruct").unlink()
    written = []
    for name, content in files.items():
        written.append(atomic_write_text(dest / name, content))
    return written


def read_map(path: Path) -> dict[str, str]:
    """``key value...`` lines as upstream reads them (value = the rest, blanks collapsed)."""
    out: dict[str, str] = {}
    # utf-8-sig: a BOM from a Windows editor would glue onto the first id (a phantom speaker).
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(maxsplit=1)
            if parts[0] in out:
                raise InputError(f"{path}:{n}: duplicate key {parts[0]}", "fix the file")
            out[parts[0]] = _one_line(parts[1]) if len(parts) > 1 else ""
    return out


def read_kaldi_dir(src: str | os.PathLike[str]) -> list[Utt]:
    """Read a kaldi dir into utterances (sorted by id). ``wav.scp`` and ``text`` are required;
    ``utt2spk`` defaults to upstream's rule (the id up to its first ``_``); ``instruct`` is
    optional. Windows paths are mapped (``C:\\x`` -> ``/mnt/c/x``); relative paths are taken
    relative to the dir."""
    d = Path(src)
    for name in ("wav.scp", "text"):
        if not (d / name).is_file():
            raise InputError(f"{d} has no {name}", "run: voicelab prepare")
    wavs = read_map(d / "wav.scp")
    texts = read_map(d / "text")
    spks = read_map(d / "utt2spk") if (d / "utt2spk").is_file() else {}
    instructs = read_map(d / "instruct") if (d / "instruct").is_file() else {}
    missing = sorted(set(wavs) ^ set(texts))
    if missing:
        raise InputError(
            f"{d}: wav.scp and text list different utterances (e.g. {missing[0]})",
            "run: voicelab prepare again",
        )
    out = []
    for utt in sorted(wavs):
        wav = to_local_path(wavs[utt])
        if not wav.is_absolute():
            wav = (d / wav).resolve()
        out.append(
            Utt(
                utt=utt,
                wav=wav,
                text=texts[utt],
                spk=spks.get(utt, utt.split("_", 1)[0]),
                instruct=instructs.get(utt),
            )
        )
    return out


def read_split(d: str | os.PathLike[str]) -> list[Utt]:
    """The utterances of a prepared split dir (``dataset/train``, ``dataset/dev``)."""
    d = Path(d)
    if not (d / "wav.scp").is_file():
        raise InputError(f"no kaldi dir at {d} (wav.scp missing)", "run: voicelab prepare")
    return read_kaldi_dir(d)
