"""The documentation site (mkdocs.yml, docs/) and the README that points into it.

The site is built with the virtual environment's own mkdocs, `--strict`, into a
temporary folder: a broken link, a page missing from the nav or a bad anchor fails the
build. The theme fetches nothing at build time (theme.font: false, no analytics), so
the build works without a network.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CONFIG = ROOT / "mkdocs.yml"
README = ROOT / "README.md"
MKDOCS = Path(sys.executable).with_name("mkdocs")
README_MAX_LINES = 200

# [text](target) and ![alt](target); the target ends at whitespace or ")"
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def _build(config: Path, site: Path) -> subprocess.CompletedProcess:
    assert MKDOCS.exists(), f"{MKDOCS} is missing: install the lock (make install) for mkdocs-material"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DO_NOT_TRACK": "1"}
    return subprocess.run(
        [str(MKDOCS), "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        cwd=config.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _relative_links(markdown: str) -> list[str]:
    """Link targets in a Markdown text that point at files of the repository: code
    blocks and code spans are not links, external URLs and bare anchors are skipped,
    and an anchor after a path is dropped."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", markdown))
    out = []
    for target in _LINK.findall(text):
        if _EXTERNAL.match(target) or target.startswith("#"):
            continue
        out.append(target.split("#", 1)[0])
    return out


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def test_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    r = _build(CONFIG, site)
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout}\n{r.stderr}"
    assert (site / "index.html").is_file()
    for page in _pages():  # every page is built (and so is in the nav: strict refuses omitted ones)
        rel = page.relative_to(DOCS).with_suffix("")
        built = site / "index.html" if rel.name == "index" else site / rel / "index.html"
        assert built.is_file(), f"{page.relative_to(ROOT)} was not built"


def test_planted_broken_link_fails_the_build(tmp_path):
    copy = tmp_path / "project"
    shutil.copytree(DOCS, copy / "docs")
    shutil.copy(CONFIG, copy / "mkdocs.yml")
    page = copy / "docs" / "install.md"
    page.write_text(page.read_text() + "\nSee also [the old page](no-such-page.md).\n")
    r = _build(copy / "mkdocs.yml", tmp_path / "site")
    assert r.returncode != 0, "a link to a missing page should fail mkdocs build --strict"
    assert "no-such-page.md" in r.stdout + r.stderr


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) < README_MAX_LINES, f"README.md has {len(lines)} lines; the details belong in docs/"


@pytest.mark.parametrize("source", [README, *_pages()], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files(source):
    missing = [t for t in _relative_links(source.read_text()) if t and not (source.parent / t).exists()]
    assert not missing, f"{source.relative_to(ROOT)} links to missing files: {missing}"


def test_link_finder_sees_links_and_skips_code():
    text = (
        "[a](docs/a.md) [b](b.md#part) [web](https://example.org) [top](#here)\n"
        "`[not](code.md)`\n```\n[nor](fenced.md)\n```\n![img](pic.png)\n"
    )
    assert _relative_links(text) == ["docs/a.md", "b.md", "pic.png"]
