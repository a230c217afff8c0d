"""The result tables of README and docs/ are the tables the experiments wrote (python/readme_tables.py keeps them
so)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .scripts import load_script

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_result_tables_equal_their_files() -> None:
    tables = load_script("readme_tables.py")
    assert README in tables.pages() and README.parent / "docs/results.md" in tables.pages()
    paths = {b["path"] for page in tables.pages() for b in tables.BLOCK.finditer(page.read_text())}
    assert {"python/results/biased_digits/report.md", "python/results/defaults/study.md",
            "python/results/defaults/check.md", "python/results/compare/compare.md",
            "python/results/compare-scenes/compare.md"} <= paths
    for page in tables.pages():
        assert tables.sync(page, check=True) == [], f"{page}: run python python/readme_tables.py"


def test_a_stale_block_is_found_and_rewritten(tmp_path: Path) -> None:
    tables = load_script("readme_tables.py")
    readme = tmp_path / "README.md"
    path = "python/results/compare/compare.md"
    readme.write_text(f"text\n<!-- table: {path} -->\n| old | table |\n<!-- /table -->\nmore\n")
    assert tables.sync(readme, check=True) == [path] and "| old |" in readme.read_text()
    assert tables.sync(readme, check=False) == [path]
    assert tables.first_table(tables.ROOT / path) in readme.read_text() and tables.sync(readme, check=True) == []
    (tmp_path / "empty.md").write_text("no table\n")
    with pytest.raises(ValueError, match="no Markdown table"):
        tables.first_table(tmp_path / "empty.md")
