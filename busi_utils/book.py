"""The course as a static site you can read without running it: ``make book``.

It renders the *executed* notebooks of one run folder (``runs/<profile>/notebooks/``, written
by papermill) to HTML with nbconvert, so every printed number and every figure is the run's
own, and adds what a book needs: a contents page with each chapter's sections, a bar on every
page that links to all chapters, and previous / next links. Links between notebooks
(``03_leakage_safe_masks.ipynb``) are rewritten to the pages. Figures are embedded in the pages
(nbconvert writes a plot's PNG into the HTML), so the site is one folder that opens from disk.

The site is a build artefact of a run (``<run>/book/``), never committed::

    python -m busi_utils.book --run-dir runs/cpu      # then open runs/cpu/book/index.html
"""

from __future__ import annotations

import argparse
import html
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

from busi_utils.core.errors import RunFolderError
from busi_utils.core.files import atomic_write_text, read_json
from busi_utils.core.runfolder import RunPaths
from busi_utils.course import course_notebooks

DISCLAIMER = "For research and teaching only: not a diagnostic device."
_HEADING = re.compile(r"<h([12])[^>]*\bid=\"([^\"]+)\"[^>]*>(.*?)</h\1>", re.S)
_NB_LINK = re.compile(r"href=\"(?:\./)?(\d\d_[A-Za-z0-9_]+)\.ipynb(#[^\"]*)?\"")
_TAG = re.compile(r"<[^>]+>")

_STYLE = """
.busi-bar { position: sticky; top: 0; z-index: 10; background: #1f3b57; color: #fff; padding: 6px 14px;
  font: 14px/1.5 system-ui, sans-serif; }
.busi-bar a { color: #fff; margin-right: 12px; text-decoration: none; }
.busi-bar a.here { font-weight: bold; text-decoration: underline; }
.busi-note { background: #fff4e5; border-left: 4px solid #e8a33d; padding: 6px 14px; font: 14px system-ui, sans-serif; }
ul.busi-toc { list-style: none; padding-left: 0; } ul.busi-toc > li { margin-top: 10px; }
.busi-pager { display: flex; justify-content: space-between; padding: 18px 14px; font: 15px system-ui, sans-serif; }
"""


@dataclass(frozen=True)
class Chapter:
    """One page of the book: its file stem, title and sections (anchor id, heading text)."""

    stem: str
    title: str
    sections: list[tuple[str, str]]
    body: str

    @property
    def page(self) -> str:
        return f"{self.stem}.html"


def render_chapter(path: Path) -> Chapter:
    """An executed notebook as HTML (nbconvert's lab template, figures embedded), with its
    title and level-2 sections read from the headings nbconvert wrote."""
    nb = nbformat.read(path, as_version=4)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    headings = [(int(level), anchor, _text(inner)) for level, anchor, inner in _HEADING.findall(body)]
    title = next((text for level, _, text in headings if level == 1), path.stem)
    sections = [(anchor, text) for level, anchor, text in headings if level == 2]
    body = _NB_LINK.sub(lambda m: f'href="{m.group(1)}.html{m.group(2) or ""}"', body)
    return Chapter(path.stem, title, sections, body)


def _text(fragment: str) -> str:
    """A heading's text without its tags and nbconvert's pilcrow anchor."""
    return html.unescape(_TAG.sub("", fragment)).replace("¶", "").strip()


def _bar(chapters: list[Chapter], here: str | None) -> str:
    links = ['<a href="index.html"' + (' class="here"' if here is None else "") + ">Contents</a>"]
    for ch in chapters:
        cls = ' class="here"' if ch.stem == here else ""
        links.append(f'<a href="{ch.page}"{cls} title="{html.escape(ch.title)}">{ch.stem[:2]}</a>')
    return f'<nav class="busi-bar">busi-course &middot; {" ".join(links)}</nav>'


def _pager(chapters: list[Chapter], k: int) -> str:
    prev = f'<a href="{chapters[k - 1].page}">&larr; {html.escape(chapters[k - 1].title)}</a>' if k else "<span></span>"
    nxt = (
        f'<a href="{chapters[k + 1].page}">{html.escape(chapters[k + 1].title)} &rarr;</a>'
        if k + 1 < len(chapters)
        else '<a href="index.html">Contents</a>'
    )
    return f'<div class="busi-pager">{prev}{nxt}</div>'


def decorate(chapter: Chapter, chapters: list[Chapter], k: int) -> str:
    """The chapter's page: the course bar and the disclaimer on top, previous / next below."""
    top = f"<style>{_STYLE}</style>{_bar(chapters, chapter.stem)}<div class='busi-note'>{DISCLAIMER}</div>"
    page = re.sub(r"<body([^>]*)>", lambda m: f"<body{m.group(1)}>{top}", chapter.body, count=1)
    return page.replace("</body>", f"{_pager(chapters, k)}</body>", 1)


def contents_page(chapters: list[Chapter], run: dict) -> str:
    """The index: what the book is, which run it shows, and every chapter with its sections."""
    items = []
    for ch in chapters:
        sections = "".join(f'<li><a href="{ch.page}#{a}">{html.escape(t)}</a></li>' for a, t in ch.sections)
        items.append(f'<li><a href="{ch.page}"><b>{html.escape(ch.title)}</b></a><ul>{sections}</ul></li>')
    facts = ", ".join(f"{k} {html.escape(str(v))}" for k, v in run.items() if v is not None)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>busi-course</title>"
        f"<style>{_STYLE} body {{ font: 16px/1.6 system-ui, sans-serif; margin: 0; }} main {{ max-width: 900px;"
        " margin: 0 auto; padding: 0 18px; }</style></head><body>"
        f"{_bar(chapters, None)}<div class='busi-note'>{DISCLAIMER}</div><main>"
        "<h1>busi-course: breast ultrasound, from raw scans to a leakage-safe two-stage pipeline</h1>"
        "<p>The executed chapters of one run of the course: every number and figure below was printed"
        f" by that run ({facts}).</p><ul class='busi-toc'>{''.join(items)}</ul></main></body></html>"
    )


def build_book(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Render the run's executed notebooks into ``out`` (default ``<run>/book``); returns the
    contents page. Every course notebook must have been executed in this run folder."""
    paths = RunPaths(Path(run_dir).resolve())
    executed = [paths.notebooks / nb.name for nb in course_notebooks()]
    missing = [p.name for p in executed if not p.exists()]
    if missing:
        raise RunFolderError(
            f"{paths.notebooks}: no executed copy of {', '.join(missing)}; run the course first "
            "(make course, or python -m busi_utils.course --run-dir ...)"
        )
    out = Path(out) if out else paths.root / "book"
    out.mkdir(parents=True, exist_ok=True)
    chapters = [render_chapter(p) for p in executed]
    for k, ch in enumerate(chapters):
        atomic_write_text(out / ch.page, decorate(ch, chapters, k))
    metrics = read_json(paths.metrics_json, {}) or {}
    run = {"profile": metrics.get("profile"), "seed": metrics.get("seed"), "folder": paths.root.name}
    index = out / "index.html"
    atomic_write_text(index, contents_page(chapters, run))
    return index


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m busi_utils.book", description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default=str(RunPaths(Path("runs/cpu")).root), help="a run folder (default runs/cpu)")
    ap.add_argument("--out", help="output folder (default <run>/book)")
    args = ap.parse_args(argv)
    index = build_book(args.run_dir, args.out)
    print(f"book written: open {index}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
