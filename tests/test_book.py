"""``make book``: the executed chapters of a run as a static site, readable without running it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from busi_utils import book
from busi_utils.core.errors import RunFolderError
from busi_utils.course import course_notebooks

HREF = re.compile(r'href="([^"#:]+\.html)(?:#([^"]*))?"')
ID = re.compile(r'\bid="([^"]+)"')


@pytest.fixture(scope="module")
def built(complete_quick_paths, tmp_path_factory) -> Path:
    return book.build_book(complete_quick_paths.root, tmp_path_factory.mktemp("book"))


def test_every_chapter_has_a_page_with_the_runs_figures(built):
    pages = {p.name for p in built.parent.glob("*.html")}
    assert pages == {"index.html", *(f"{nb.stem}.html" for nb in course_notebooks())}
    for nb in course_notebooks():
        page = (built.parent / f"{nb.stem}.html").read_text()
        assert book.DISCLAIMER in page and 'class="busi-bar"' in page
        if nb.stem[:2] in ("01", "02", "03", "04", "05", "07", "08"):  # the chapters that plot
            assert re.search(r'<img[^>]+src="data:image/png;base64,', page), f"{nb.stem}: no figure"
    contents = built.read_text()
    for nb in course_notebooks():
        assert f'href="{nb.stem}.html"' in contents


def test_every_link_of_the_book_leads_to_a_page_and_an_anchor_that_exist(built):
    ids = {p.name: set(ID.findall(p.read_text())) for p in built.parent.glob("*.html")}
    checked = 0
    for page in built.parent.glob("*.html"):
        for target, anchor in HREF.findall(page.read_text()):
            assert target in ids, f"{page.name} links to a missing page {target}"
            assert not anchor or anchor in ids[target], f"{page.name} links to a missing anchor {target}#{anchor}"
            checked += 1
    assert checked > 3 * len(ids)  # the bar, the pager and the contents' sections


def test_notebook_links_are_rewritten_to_pages(tmp_path, complete_quick_paths):
    run = tmp_path / "run"
    shutil.copytree(complete_quick_paths.notebooks, run / "notebooks")
    import nbformat

    path = run / "notebooks" / course_notebooks()[0].name
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("See [chapter 3](03_leakage_safe_masks.ipynb#top)."))
    nbformat.write(nb, path)
    book.build_book(run)
    page = (run / "book" / path.with_suffix(".html").name).read_text()
    assert 'href="03_leakage_safe_masks.html#top"' in page and "03_leakage_safe_masks.ipynb" not in page


def test_a_run_without_executed_notebooks_is_named(tmp_path):
    with pytest.raises(RunFolderError, match="no executed copy of 01_eda.ipynb"):
        book.build_book(tmp_path)
