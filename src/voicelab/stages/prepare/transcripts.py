"""Step 3 without ASR: import existing transcripts (sidecar ``.txt``/``.lab``, a ``.list``, CSV or
TSV); step 4: normalize text and flag hallucinations."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from voicelab.errors import InputError
from voicelab.paths import to_local_path
from voicelab.stages.prepare.options import TRANSCRIPT_SIDECARS, PrepareOptions


@dataclass
class Transcript:
    text: str
    language: str | None = None


def read_user_file(path: Path) -> str:
    for enc in ("utf-8-sig", "gb18030"):
        try:
            return path.read_text(encoding=enc)
        except UnicodeDecodeError:
            continue
    raise InputError(f"cannot read {path} as UTF-8 or GB18030 text", "save it as UTF-8")


def _lang(code: str | None) -> str | None:
    if not code:
        return None
    c = code.strip().lower()
    return {"all_zh": "zh", "all_ja": "ja", "yue": "zh"}.get(c, c[:2] or None)


def load_transcript_file(path: Path) -> list[tuple[str, Transcript]]:
    """(file as written, transcript) pairs from a GPT-SoVITS ``.list`` (``path|speaker|lang|
    text``) or a CSV/TSV of file and text (a header row naming them is optional)."""
    if not path.is_file():
        raise InputError(f"transcripts file not found: {path}", "check --transcripts")
    raw = read_user_file(path)
    out: list[tuple[str, Transcript]] = []
    if path.suffix.lower() == ".list":
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("|", 3)
            if len(parts) != 4:
                raise InputError(
                    f"{path}:{n}: expected path|speaker|lang|text", "fix the line or remove it"
                )
            out.append((parts[0].strip(), Transcript(parts[3].strip(), _lang(parts[2]))))
        return out
    delim = "\t" if path.suffix.lower() == ".tsv" or "\t" in raw.split("\n", 1)[0] else ","
    rows = [r for r in csv.reader(raw.splitlines(), delimiter=delim) if any(c.strip() for c in r)]
    if not rows:
        return out
    head = [c.strip().lower() for c in rows[0]]
    fcol, tcol, lcol = 0, len(rows[0]) - 1, None
    file_names = ("file", "path", "audio", "wav", "filename")
    if any(h in file_names for h in head) and "text" in head:
        fcol = next(i for i, h in enumerate(head) if h in file_names)
        tcol = head.index("text")
        lcol = head.index("language") if "language" in head else None
        rows = rows[1:]
    for n, r in enumerate(rows, 1):
        if len(r) <= max(fcol, tcol):
            raise InputError(f"{path}: row {n} has no text column", "use file,text rows")
        lang = _lang(r[lcol]) if lcol is not None and lcol < len(r) else None
        out.append((r[fcol].strip(), Transcript(r[tcol].strip(), lang)))
    return out


def match_transcripts(src: Path, files: list[Path], opts: PrepareOptions) -> dict[Path, Transcript]:
    """Transcript per audio file: from ``opts.transcripts`` (matched by absolute path, then by
    path relative to the source folder, then by unique base name) or from sidecar files."""
    out: dict[Path, Transcript] = {}
    if opts.transcripts is None:
        for f in files:
            for ext in TRANSCRIPT_SIDECARS:
                side = f.with_suffix(ext)
                if side.is_file():
                    out[f] = Transcript(read_user_file(side).strip())
                    break
        return out
    entries = load_transcript_file(to_local_path(opts.transcripts))
    by_abs = {f.resolve(): f for f in files}
    by_rel = {f.relative_to(src).as_posix(): f for f in files}
    names = Counter(f.name for f in files)
    by_name = {f.name: f for f in files if names[f.name] == 1}
    for written, tr in entries:
        local = to_local_path(written)
        target = None
        if local.is_absolute():
            target = by_abs.get(local.resolve())
        else:
            target = by_rel.get(local.as_posix()) or by_abs.get((src / local).resolve())
        if target is None:
            # Lists written on another machine (C:\...) or before the folder moved.
            target = by_name.get(Path(written.replace("\\", "/")).name)
        if target is not None:
            out[target] = tr
    return out


def finish_text(raw: str, language: str | None, text_norm: bool) -> tuple[str, str, list[str]]:
    """(normalized text, language, hallucination flags) of a raw transcript."""
    from voicelab.blocks import textnorm

    flags = textnorm.hallucination_flags(raw) if raw.strip() else []
    lang = language or textnorm.detect_language(raw)
    if text_norm:
        text = textnorm.normalize(raw, lang if lang in ("zh", "en") else None)
    else:
        text = textnorm.to_simplified(textnorm.clean_whitespace(raw))
    return text, lang, flags
