"""A self-contained HTML report: one file, figures inlined as base64 PNG, CSS inline.

No scripts and no external assets, so it opens offline, mails as one
attachment, prints cleanly and reflows on a phone. All user text is escaped;
section text may use blank lines for paragraphs, ``code`` and **bold**.

    report = Report("prefdyn — learning dynamics of alignment", subtitle="demo run")
    report.headline("Spearman(D, loss decrease)", "0.94", note="6 behaviours, p = 0.005")
    sec = report.section("Distinguishability sets the speed", text="...")
    sec.figure(fig, caption="...")
    sec.table(rows, caption="...")
    sec.note("The bound is violated on real embeddings: its assumptions do not hold.")
    report.footer({"seed": 0, "config": "demo.yaml"})
    report.write("out/report.html")
"""

from __future__ import annotations

import base64
import html
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from prefdyn.reports import _style
from prefdyn.reports.plots import close_figure, fig_to_png_bytes

__all__ = ["Report", "Section"]

FIGURE_DPI = 160
# Figures are shown at 128 CSS px per figure inch: matplotlib's 9.5 pt labels
# then read at about the size of the page's own small print.
CSS_PX_PER_INCH = 128
NOTE_KINDS = ("warning", "info", "danger")
TONES = (None, "good", "warn", "bad")
_NUM = ' class="num"'


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _inline(text: str) -> str:
    """Escape, then allow ``code`` and **bold** (safe: applied to escaped text)."""
    out = _esc(text)
    out = re.sub(r"`([^`\n]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*\n]+)\*\*", r"<strong>\1</strong>", out)


def _paragraphs(text: str) -> str:
    """Blank-line separated paragraphs; single newlines are ordinary spaces."""
    blocks = [b.strip() for b in re.split(r"\n\s*\n", text.strip())]
    return "".join(f"<p>{_inline(' '.join(b.split()))}</p>" for b in blocks if b)


def _slug(title: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"
    slug, i = base, 2
    while slug in taken:
        slug, i = f"{base}-{i}", i + 1
    taken.add(slug)
    return slug


def _png_display_size(png: bytes) -> tuple[int, int] | None:
    """(width, height) in CSS px from the PNG header and its pHYs (dpi) chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", png[16:24])
    at = png.find(b"pHYs", 0, 4096)
    if at > 0:
        ppu_x, _, unit = struct.unpack(">IIB", png[at + 4:at + 13])
        if unit == 1 and ppu_x > 0:  # pixels per metre
            scale = CSS_PX_PER_INCH / (ppu_x * 0.0254)
            return round(width * scale), round(height * scale)
    return width, height


@dataclass(frozen=True)
class Link:
    """A table cell linking ``href`` (a relative path stays relative: a run folder's report)."""

    text: str
    href: str


def _format_cell(value: Any, number_format: str) -> tuple[str, bool]:
    """(escaped text, is_numeric) for one table cell."""
    if value is None:
        return "", False
    if isinstance(value, Link):
        return f'<a href="{_esc(value.href)}">{_esc(value.text)}</a>', False
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return ("yes" if value else "no"), False
    if isinstance(value, Integral):
        return _esc(int(value)), True
    if isinstance(value, Real):
        value = float(value)
        if math.isnan(value):
            return '<span class="na">—</span>', True
        if math.isinf(value):
            return ("∞" if value > 0 else "−∞"), True
        return _esc(_style.format_number(number_format, value)), True
    return _inline(str(value)), False


def _column_format(values: list[Any], fmt: str) -> str:
    """Turn a ``{:.Ng}`` format into the fixed decimals its column's floats need."""
    if not re.fullmatch(r"\{:\.\d+g\}", fmt):
        return fmt
    floats = [float(v) for v in values if isinstance(v, Real) and not isinstance(v, Integral)
              and math.isfinite(float(v))]
    shown = [fmt.format(v) for v in floats]
    if not shown or any("e" in text for text in shown):
        return fmt
    decimals = max(len(text.partition(".")[2]) for text in shown)
    return f"{{:.{decimals}f}}"


class Section:
    """One titled part of a report: explanation, figures, tables, notes, in order."""

    def __init__(self, title: str, text: str | None, anchor: str):
        self.title = title
        self.anchor = anchor
        self._blocks: list[str] = []
        if text:
            self.text(text)

    def text(self, text: str) -> Section:
        """Add plain-language paragraphs (blank lines separate them)."""
        self._blocks.append(f'<div class="prose">{_paragraphs(text)}</div>')
        return self

    def figure(self, fig: Figure | bytes | str | Path, caption: str | None = None, *,
               alt: str | None = None, close: bool = True) -> Section:
        """Embed a figure, PNG bytes or a PNG file, with an optional caption.

        A ``Figure`` is rendered at ``FIGURE_DPI`` and then closed (``close=False``
        keeps it).
        """
        self._blocks.append(self._figure_html(fig, caption, alt, close))
        return self

    def figures(self, figs: Sequence[Figure | bytes | str | Path],
                captions: Sequence[str | None] | None = None, *, close: bool = True) -> Section:
        """Figures side by side on a wide screen, stacked on a narrow one."""
        captions = list(captions) if captions is not None else [None] * len(figs)
        if len(captions) != len(figs):
            raise ValueError(f"{len(figs)} figures but {len(captions)} captions")
        inner = "".join(self._figure_html(f, c, None, close) for f, c in zip(figs, captions))
        self._blocks.append(f'<div class="figrow">{inner}</div>')
        return self

    @staticmethod
    def _figure_html(fig: Figure | bytes | str | Path, caption: str | None, alt: str | None,
                     close: bool) -> str:
        if isinstance(fig, (bytes, bytearray)):
            png = bytes(fig)
        elif isinstance(fig, (str, Path)):
            png = Path(fig).read_bytes()
        else:
            png = fig_to_png_bytes(fig, dpi=FIGURE_DPI)
            if close:
                close_figure(fig)
        size = _png_display_size(png)
        dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
        data = base64.b64encode(png).decode("ascii")
        alt_text = _esc(alt or caption or "figure")
        cap = f"<figcaption>{_inline(caption)}</figcaption>" if caption else ""
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{alt_text}"{dims}>'
                f"{cap}</figure>")

    def table(self, rows: Sequence[Mapping[str, Any]], caption: str | None = None, *,
              number_format: str | Mapping[str, str] = "{:.3g}",
              columns: Sequence[str] | None = None) -> Section:
        """A compact table, one dict a row; columns are the keys in first-seen order.

        ``number_format`` formats floats, for all columns or per column name
        (others keep ``"{:.3g}"``). A ``g`` format becomes one number of
        decimals per column (0.4, 0.12 -> 0.40, 0.12) so the decimal points line
        up. Numbers are right-aligned; NaN shows as a dash.
        """
        if columns is None:
            columns = list(dict.fromkeys(k for row in rows for k in row))
        formats = (number_format if isinstance(number_format, Mapping)
                   else dict.fromkeys(columns, number_format))
        formats = {c: _column_format([row.get(c) for row in rows], formats.get(c, "{:.3g}"))
                   for c in columns}
        cells = [[_format_cell(row.get(c), formats.get(c, "{:.3g}")) for c in columns]
                 for row in rows]
        # A column is numeric (right-aligned, header too) when all its filled cells are.
        numeric = [all(cell[1] for cell in col if cell[0]) and any(cell[0] for cell in col)
                   for col in zip(*cells)] if cells else [False] * len(columns)
        # Column names are identifiers (separable_share, chosen_logp_change): a header may
        # break after an underscore, so a many-column table still fits its card.
        head = "".join(f'<th scope="col"{_NUM if n else ""}>{_esc(c).replace("_", "_<wbr>")}</th>'
                       for c, n in zip(columns, numeric))
        body = "".join(
            "<tr>" + "".join(f'<td{_NUM if n else ""}>{text}</td>'
                             for (text, _), n in zip(row, numeric)) + "</tr>"
            for row in cells)
        cap = f"<caption>{_inline(caption)}</caption>" if caption else ""
        self._blocks.append(f'<div class="table-wrap"><table>{cap}<thead><tr>{head}</tr>'
                            f"</thead><tbody>{body}</tbody></table></div>")
        return self

    def note(self, text: str, *, kind: str = "warning", title: str | None = None) -> Section:
        """A call-out box: ``kind`` is ``"warning"`` (default), ``"info"`` or ``"danger"``."""
        if kind not in NOTE_KINDS:
            raise ValueError(f"note kind must be one of {NOTE_KINDS}, got {kind!r}")
        head = f'<p class="note-title">{_esc(title)}</p>' if title else ""
        self._blocks.append(f'<aside class="note {kind}" role="note">{head}'
                            f"{_paragraphs(text)}</aside>")
        return self

    def render(self) -> str:
        return (f'<section id="{self.anchor}"><h2>{_esc(self.title)}</h2>'
                + "".join(self._blocks) + "</section>")


class Report:
    """Headline cards, then sections, then a provenance footer; see the module docstring."""

    def __init__(self, title: str, subtitle: str | None = None):
        self.title = title
        self.subtitle = subtitle
        self._cards: list[str] = []
        self._sections: list[Section] = []
        self._footer: list[str] = []
        self._anchors: set[str] = set()

    def headline(self, label: str, value: Any, note: str | None = None, *,
                 tone: str | None = None) -> Report:
        """A card with one key number; ``tone`` colours its top edge (good, warn, bad)."""
        if tone not in TONES:
            raise ValueError(f"tone must be one of {TONES}, got {tone!r}")
        if isinstance(value, Real) and not isinstance(value, Integral):
            value = format(float(value), ".3g")
        note_html = f'<div class="card-note">{_inline(note)}</div>' if note else ""
        value = str(value)
        # Words (a behaviour's name) get a smaller size than numbers so they fit whole.
        size = " long" if len(value) > 7 else ""
        self._cards.append(f'<div class="card{" " + tone if tone else ""}">'
                           f'<div class="card-label">{_esc(label)}</div>'
                           f'<div class="card-value{size}">{_esc(value)}</div>{note_html}</div>')
        return self

    def section(self, title: str, text: str | None = None) -> Section:
        """Start a new section (added to the page in call order) and return it."""
        section = Section(title, text, _slug(title, self._anchors))
        self._sections.append(section)
        return section

    def footer(self, text: str | Mapping[str, Any]) -> Report:
        """Provenance: a paragraph, or a mapping shown as a name/value list. Repeatable."""
        if isinstance(text, Mapping):
            items = "".join(f"<dt>{_esc(k)}</dt><dd>{_inline(str(v))}</dd>"
                            for k, v in text.items())
            self._footer.append(f"<dl>{items}</dl>")
        else:
            self._footer.append(_paragraphs(text))
        return self

    def render(self) -> str:
        """The whole page as one HTML string."""
        subtitle = f'<p class="subtitle">{_inline(self.subtitle)}</p>' if self.subtitle else ""
        cards = f'<div class="cards">{"".join(self._cards)}</div>' if self._cards else ""
        toc = ""
        if len(self._sections) >= 3:
            links = "".join(f'<li><a href="#{s.anchor}">{_esc(s.title)}</a></li>'
                            for s in self._sections)
            toc = f'<nav class="toc" aria-label="Contents"><ol>{links}</ol></nav>'
        footer = f'<footer>{"".join(self._footer)}</footer>' if self._footer else ""
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<meta name="generator" content="prefdyn">'
            f"<title>{_esc(self.title)}</title><style>{_css()}</style></head>"
            f'<body><main class="page"><header><h1>{_esc(self.title)}</h1>{subtitle}</header>'
            f'{cards}{toc}{"".join(s.render() for s in self._sections)}{footer}'
            "</main></body></html>\n")

    def write(self, path: str | Path) -> Path:
        """Write the page to ``path`` (parents created) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render(), encoding="utf-8")
        return path

    def _repr_html_(self) -> str:  # shown inline in Jupyter
        return self.render()


def _css() -> str:
    s = _style
    return f"""
:root{{--ink:{s.INK};--muted:{s.MUTED};--rule:{s.RULE};--accent:{s.ACCENT};
--good:{s.GOOD};--warn:{s.WARN};--bad:{s.BAD};--bg:#f5f7fa;--card:#fff;
--zebra:rgba(31,64,104,.037);--head:rgba(31,64,104,.072);--shade:rgba(16,24,40,.3);
color-scheme:light}}
*{{box-sizing:border-box}}
html{{-webkit-text-size-adjust:100%;text-size-adjust:100%}}
body{{margin:0;background:var(--bg);color:var(--ink);font:16px/1.55 system-ui,-apple-system,
"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans","Liberation Sans",sans-serif}}
.page{{display:block;max-width:1040px;margin:0 auto;padding:44px 28px 56px}}
header h1{{font-size:2rem;line-height:1.2;margin:0 0 .4rem;letter-spacing:-.015em}}
.subtitle{{color:var(--muted);margin:0;font-size:1.05rem;max-width:75ch}}
.cards{{display:grid;grid-template-columns:repeat(auto-fit,minmax(210px,1fr));gap:14px;
margin:28px 0 6px}}
.card{{background:var(--card);border:1px solid var(--rule);border-top:4px solid var(--accent);
border-radius:10px;padding:14px 18px 16px;box-shadow:0 1px 2px rgba(16,24,40,.05)}}
.card.good{{border-top-color:var(--good)}}.card.warn{{border-top-color:var(--warn)}}
.card.bad{{border-top-color:var(--bad)}}
.card-label{{font-size:.76rem;font-weight:600;letter-spacing:.05em;text-transform:uppercase;
color:var(--muted)}}
.card-value{{font-size:2.1rem;font-weight:700;line-height:1.15;margin:.3rem 0 .2rem;
font-variant-numeric:tabular-nums;overflow-wrap:break-word}}
.card-value.long{{font-size:1.45rem;line-height:1.25;padding:.25rem 0 .1rem}}
.card-note{{font-size:.86rem;color:var(--muted)}}
.toc ol{{list-style:none;display:flex;flex-wrap:wrap;gap:6px 8px;padding:0;margin:22px 0 0}}
.toc a{{display:inline-block;padding:3px 12px;border:1px solid var(--rule);border-radius:999px;
background:var(--card);color:var(--ink);text-decoration:none;font-size:.86rem}}
.toc a:hover{{border-color:var(--accent);color:var(--accent)}}
section{{background:var(--card);border:1px solid var(--rule);border-radius:12px;
padding:26px 30px 10px;margin:22px 0;box-shadow:0 1px 2px rgba(16,24,40,.05)}}
h2{{font-size:1.35rem;line-height:1.3;margin:0 0 .7rem;letter-spacing:-.01em}}
.prose p,.note p,footer p{{margin:0 0 .8rem;max-width:75ch}}
code{{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;
font-size:.88em;background:var(--head);padding:.08em .35em;border-radius:4px}}
figure{{margin:22px auto;width:fit-content;max-width:100%}}
figure img{{display:block;max-width:100%;height:auto;margin:0 auto}}
figcaption{{font-size:.88rem;color:var(--muted);margin-top:.5rem;contain:inline-size}}
.figrow{{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:0 24px;
align-items:start}}
.table-wrap{{overflow-x:auto;margin:20px 0;max-width:100%;-webkit-overflow-scrolling:touch;
overscroll-behavior-x:contain;
background:linear-gradient(90deg,var(--card) 40%,rgba(255,255,255,0)) 0 0/32px 100% no-repeat local,
linear-gradient(270deg,var(--card) 40%,rgba(255,255,255,0)) 100% 0/32px 100% no-repeat local,
radial-gradient(farthest-side at 0 50%,var(--shade),rgba(16,24,40,0)) 0 0/14px 100% no-repeat scroll,
radial-gradient(farthest-side at 100% 50%,var(--shade),rgba(16,24,40,0)) 100% 0/14px 100% no-repeat scroll}}
.table-wrap::-webkit-scrollbar{{height:10px}}
.table-wrap::-webkit-scrollbar-track{{background:var(--zebra);border-radius:5px}}
.table-wrap::-webkit-scrollbar-thumb{{background:#b6c0cb;border-radius:5px}}
@supports not selector(::-webkit-scrollbar){{.table-wrap{{scrollbar-width:thin;
scrollbar-color:#b6c0cb var(--zebra)}}}}
table{{border-collapse:collapse;font-size:.9rem;margin:0 auto;min-width:50%}}
caption{{caption-side:bottom;text-align:left;color:var(--muted);font-size:.85rem;
padding-top:.5rem}}
th,td{{padding:6px 12px;text-align:left;vertical-align:top;border-bottom:1px solid var(--rule)}}
thead th{{background:var(--head);font-weight:600;border-bottom:1px solid #c3ccd6;
vertical-align:bottom;overflow-wrap:normal}}
tbody tr:nth-child(even){{background:var(--zebra)}}
.num{{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}}
.na{{color:var(--muted)}}
.note{{border:1px solid #eedfb8;border-left:4px solid var(--warn);background:#fdf8ec;
border-radius:8px;padding:12px 16px 4px;margin:18px 0}}
.note.info{{border-color:#cfe0f3;border-left-color:var(--accent);background:#f1f6fc}}
.note.danger{{border-color:#f0c9c4;border-left-color:var(--bad);background:#fdf1ef}}
.note-title{{font-weight:700;margin:0 0 .3rem}}
footer{{color:var(--muted);font-size:.86rem;border-top:1px solid var(--rule);
margin-top:34px;padding-top:16px}}
footer dl{{display:grid;grid-template-columns:max-content 1fr;gap:3px 18px;margin:0 0 .8rem}}
footer dt{{font-weight:600;color:var(--ink)}}footer dd{{margin:0;overflow-wrap:anywhere}}
@media (max-width:640px){{
.page{{padding:22px 12px 36px}}header h1{{font-size:1.5rem}}
section{{padding:18px 16px 4px;border-radius:10px}}.card-value{{font-size:1.7rem}}
.card{{padding:12px 12px 14px}}.card-value.long{{font-size:clamp(.95rem,4.2vw,1.25rem)}}
.cards{{grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:10px}}
.figrow{{grid-template-columns:1fr}}th,td{{padding:5px 9px}}
footer dl{{grid-template-columns:1fr}}footer dd{{margin-bottom:6px}}}}
@media print{{
@page{{margin:16mm 14mm}}
body{{background:#fff;font-size:10.5pt}}.page{{max-width:none;padding:0}}
*{{-webkit-print-color-adjust:exact;print-color-adjust:exact;box-shadow:none!important}}
.toc{{display:none}}.cards{{grid-template-columns:repeat(auto-fit,minmax(140px,1fr))}}
section{{border:0;border-radius:0;padding:0;margin:18pt 0}}
h2{{break-after:avoid;page-break-after:avoid}}
figure,.card,.note,table,tr{{break-inside:avoid;page-break-inside:avoid}}
.table-wrap{{overflow:visible}}table{{font-size:8pt}}th,td{{padding:3px 6px}}
a{{color:inherit;text-decoration:none}}}}
"""
