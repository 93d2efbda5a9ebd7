"""The self-contained HTML report: content, escaping, no external assets."""

from __future__ import annotations

import re

import numpy as np
import pytest

from prefdyn.reports import Report, fig_to_png_bytes, plot_bars, plot_curves


def small_figure():
    return plot_bars(["a", "b"], [1.0, 2.0], ylabel="D", title="bars")


@pytest.fixture(scope="module")
def report() -> Report:
    report = Report("prefdyn — learning dynamics", subtitle="demo <run>")
    report.headline("Spearman(D, loss decrease)", "0.94", note="6 behaviors, p=0.005", tone="good")
    report.headline("Fastest", 0.123456)
    sec = report.section("Distinguishability sets the speed",
                         text="First paragraph with `D` and **bold**.\n\n"
                              "Second <script>alert(1)</script>")
    sec.figure(small_figure(), caption="Loss curves & their D")
    sec.table([{"behavior": "power-seeking", "D": 0.123456, "steps": 40, "ok": True},
               {"behavior": "wealth", "D": float("nan"), "steps": 7, "ok": False}],
              caption="Per-behaviour summary")
    sec.note("bound violated on real embeddings: assumptions do not hold", title="Careful")
    report.section("Theorem 4.1 bound").figure(
        plot_curves(np.arange(5), {"a": np.arange(5.0)}, bounds={"a": np.arange(5.0) + 1}))
    report.section("Misalignment").note("info box", kind="info")
    report.footer("Anthropic persona data, CC-BY-4.0. https://github.com/anthropics/evals")
    report.footer({"seed": 0, "config": "demo.yaml"})
    return report


def test_report_writes_one_self_contained_file(report, tmp_path):
    path = report.write(tmp_path / "out" / "report.html")
    html = path.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert "0.94" in html and "Spearman(D, loss decrease)" in html
    for title in ("Distinguishability sets the speed", "Theorem 4.1 bound", "Misalignment"):
        assert f">{title}</h2>" in html
    assert html.count('src="data:image/png;base64,') == 2
    # No external assets or scripts: no src/href/url() pointing at a network address.
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html)
    assert "url(" not in html
    assert "<script" not in html and "<link" not in html
    assert "http://" not in html.replace("https://github.com/anthropics/evals", "")


def test_user_text_is_escaped(report):
    html = report.render()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "demo &lt;run&gt;" in html
    assert "Loss curves &amp; their D" in html
    # Markup shortcuts work on escaped text only.
    assert "<code>D</code>" in html and "<strong>bold</strong>" in html
    evil = Report("t")
    evil.section("s", text="**<img src=x onerror=alert(1)>**")
    assert "<strong>&lt;img src=x onerror=alert(1)&gt;</strong>" in evil.render()


def test_paragraphs_headlines_and_contents(report):
    html = report.render()
    assert html.count("<p>First paragraph") == 1 and "<p>Second" in html
    assert "0.123" in html  # a float headline value is shown to 3 significant digits
    assert 'class="card good"' in html
    assert '<nav class="toc"' in html and 'href="#theorem-4-1-bound"' in html
    assert 'id="distinguishability-sets-the-speed"' in html


def test_table_formats_numbers_and_aligns_them(report):
    html = report.render()
    table = html[html.index("<table>"):html.index("</table>")]
    assert re.findall(r"<th[^>]*>([^<]*)</th>", table) == ["behavior", "D", "steps", "ok"]
    assert '<td class="num">0.123</td>' in table
    assert '<td class="num">40</td>' in table
    assert '<span class="na">—</span>' in table  # NaN
    assert "<td>yes</td>" in table and "<td>no</td>" in table
    assert "<caption>Per-behaviour summary</caption>" in table

    other = Report("t")
    other.section("s").table([{"p": 0.000123, "x": -1.5}], number_format={"p": "{:.1e}"})
    html = other.render()
    assert "1.2e−04" in html and "−1.5" in html

    aligned = Report("t")
    aligned.section("s").table([{"D": 0.4}, {"D": 0.12}, {"D": 0.9}])
    assert re.findall(r'<td class="num">([^<]*)</td>', aligned.render()) == ["0.40", "0.12", "0.90"]


def test_notes_figures_from_bytes_files_and_rows(tmp_path):
    report = Report("t")
    sec = report.section("s")
    png = fig_to_png_bytes(small_figure())
    (tmp_path / "fig.png").write_bytes(png)
    sec.figure(png, caption="from bytes")
    sec.figure(tmp_path / "fig.png", caption="from a file")
    sec.figures([small_figure(), png], captions=["left", None])
    sec.note("danger!", kind="danger")
    html = report.render()
    assert html.count("data:image/png;base64,") == 4
    assert '<div class="figrow">' in html
    assert re.search(r'<img [^>]*width="\d+" height="\d+"', html)
    assert 'class="note danger"' in html
    with pytest.raises(ValueError):
        sec.note("x", kind="loud")
    with pytest.raises(ValueError):
        report.headline("x", "1", tone="purple")
    with pytest.raises(ValueError):
        sec.figures([png], captions=["a", "b"])


def test_repeated_titles_get_distinct_anchors():
    report = Report("t")
    report.section("Results")
    report.section("Results")
    report.section("?!")
    html = report.render()
    assert 'id="results"' in html and 'id="results-2"' in html and 'id="section"' in html


def test_rendering_is_deterministic():
    def build():
        report = Report("t")
        report.section("s").figure(small_figure())
        return report.render()
    assert build() == build()


def test_page_is_styled_for_narrow_screens_and_print(report):
    html = report.render()
    assert '<meta name="viewport"' in html
    assert "@media (max-width:640px)" in html and "@media print" in html


def test_wide_tables_scroll_inside_their_card_with_a_cue():
    report = Report("t")
    report.section("s").table([{f"column_{i}": float(i) for i in range(20)}])
    html = report.render()
    assert '<div class="table-wrap"><table>' in html
    assert '<th scope="col" class="num">column_<wbr>7</th>' in html  # headers may break at "_"
    css = html[html.index("<style>"):html.index("</style>")]
    wrap = re.search(r"\.table-wrap\{([^}]*)\}", css).group(1)
    assert "overflow-x:auto" in wrap and "max-width:100%" in wrap
    assert wrap.count("no-repeat local") == 2 and wrap.count("no-repeat scroll") == 2  # edge shadows
    assert ".table-wrap::-webkit-scrollbar{height:10px}" in css  # visible even with overlay scrollbars
