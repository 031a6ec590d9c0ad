"""The static listening page (``index.html``): one row per sentence, one take per voice."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from voicelab.fsutil import atomic_write_text

if TYPE_CHECKING:
    pass


@dataclass
class Take:
    """One sentence in one variant, as the page shows it."""

    variant: str  # the real variant name (never written to a blind page)
    label: str  # what the page shows: the variant name, or a letter when blind
    wav: str  # path relative to index.html
    seconds: float = 0.0
    rtf: float = 0.0


@dataclass
class PageSentence:
    id: str
    text: str
    spoken_text: str = ""  # after normalization, as the model read it
    takes: list[Take] = field(default_factory=list)


@dataclass
class Page:
    report_id: str
    title: str
    blind: bool = False
    meta: dict[str, str] = field(default_factory=dict)
    variants: dict[str, str] = field(default_factory=dict)  # name -> description (not blind)
    sentences: list[PageSentence] = field(default_factory=list)


# ---- HTML ---------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI","PingFang SC","Microsoft YaHei",sans-serif;
margin:2rem auto;max-width:60rem;padding:0 1rem;color:#222;background:#fafafa}
h1{font-size:1.5rem}h2{font-size:1.05rem;margin:0 0 .3rem}
.meta{color:#555;font-size:.9rem}.meta td{padding:0 .8rem 0 0}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:1rem;margin:1rem 0}
.text{font-size:1.1rem;margin:.2rem 0}.spoken{color:#777;font-size:.85rem;margin:.2rem 0 .6rem}
table.takes{border-collapse:collapse;width:100%}
table.takes td,table.takes th{padding:.25rem .5rem;text-align:left;border-top:1px solid #eee}
audio{width:22rem;max-width:100%;height:2rem}.num{font-variant-numeric:tabular-nums;color:#444}
#choices{position:sticky;bottom:0;background:#fffbe6;border:1px solid #e6d27a;padding:.8rem;
border-radius:6px}#choices textarea{width:100%;height:5rem;font-family:monospace;font-size:.8rem}
"""

_BLIND_JS = """
(function () {
  var report = document.body.getAttribute('data-report');
  var storeKey = 'voicelab-audition:' + report;
  var choices = {};
  try { choices = JSON.parse(window.localStorage.getItem(storeKey) || '{}') || {}; }
  catch (e) { choices = {}; }
  function payload() {
    return JSON.stringify({report: report, choices: choices}, null, 2);
  }
  function show() {
    document.getElementById('choices-json').value = payload();
    document.getElementById('choices-count').textContent = Object.keys(choices).length;
  }
  function save() {
    try { window.localStorage.setItem(storeKey, JSON.stringify(choices)); } catch (e) {}
    show();
  }
  var radios = document.querySelectorAll('input[type=radio][data-sentence]');
  for (var i = 0; i < radios.length; i++) {
    (function (r) {
      if (choices[r.getAttribute('data-sentence')] === r.value) { r.checked = true; }
      r.addEventListener('change', function () {
        choices[r.getAttribute('data-sentence')] = r.value; save();
      });
    })(radios[i]);
  }
  document.getElementById('choices-download').addEventListener('click', function () {
    var a = document.createElement('a');
    a.href = 'data:application/json;charset=utf-8,' + encodeURIComponent(payload());
    a.download = report + '-choices.json';
    document.body.appendChild(a); a.click(); document.body.removeChild(a);
  });
  document.getElementById('choices-clear').addEventListener('click', function () {
    choices = {};
    for (var j = 0; j < radios.length; j++) { radios[j].checked = false; }
    save();
  });
  show();
})();
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def render_html(page: Page) -> str:
    """The static report page (pure): audio players per sentence and take, texts, durations and
    RTF; in blind mode letters instead of variant names and a choice per sentence."""
    out = [
        "<!doctype html>",
        '<html lang="zh"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(page.title)}</title><style>{_CSS}</style></head>",
        f'<body data-report="{_e(page.report_id)}">',
        f"<h1>{_e(page.title)}</h1>",
        '<table class="meta">',
    ]
    for k, v in page.meta.items():
        out.append(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>")
    out.append("</table>")
    if page.blind:
        out.append(
            "<p>Blind test: the takes of each sentence are shuffled and labelled by letter. "
            "Pick the best take of each sentence; the picks stay in this browser. When done, "
            "download them (or copy the text at the bottom) and run "
            "<code>voicelab audition --unblind FILE</code>.</p>"
        )
    elif page.variants:
        out.append('<table class="meta"><tr><td colspan="2"><b>variants</b></td></tr>')
        for name, desc in page.variants.items():
            out.append(f"<tr><td>{_e(name)}</td><td>{_e(desc)}</td></tr>")
        out.append("</table>")
    for n, s in enumerate(page.sentences, 1):
        out.append(f'<section id="s-{_e(s.id)}"><h2>{n}. {_e(s.id)}</h2>')
        out.append(f'<p class="text">{_e(s.text)}</p>')
        if s.spoken_text and s.spoken_text != s.text:
            out.append(f'<p class="spoken">read as: {_e(s.spoken_text)}</p>')
        head = "<th>take</th><th>audio</th><th>duration</th>"
        head += "<th>best</th>" if page.blind else "<th>RTF</th>"
        out.append(f'<table class="takes"><tr>{head}</tr>')
        for t in s.takes:
            cells = [
                f"<td>{_e(t.label)}</td>",
                f'<td><audio controls preload="none" src="{_e(quote(t.wav, safe="/"))}">'
                "</audio></td>",
                f'<td class="num">{t.seconds:.2f} s</td>',
            ]
            if page.blind:
                cells.append(
                    f'<td><input type="radio" name="pick-{_e(s.id)}" value="{_e(t.label)}" '
                    f'data-sentence="{_e(s.id)}" aria-label="best: {_e(t.label)}"></td>'
                )
            else:
                cells.append(f'<td class="num">{t.rtf:.2f}</td>')
            out.append(f"<tr>{''.join(cells)}</tr>")
        out.append("</table></section>")
    if page.blind:
        out += [
            '<div id="choices"><b><span id="choices-count">0</span> of '
            f"{len(page.sentences)} picked.</b> "
            '<button type="button" id="choices-download">Download choices</button> '
            '<button type="button" id="choices-clear">Clear</button>',
            '<textarea id="choices-json" readonly></textarea></div>',
            f"<script>{_BLIND_JS}</script>",
        ]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_page(report_dir: Path, page: Page) -> Path:
    return atomic_write_text(report_dir / "index.html", render_html(page))
