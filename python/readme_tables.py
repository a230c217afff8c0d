"""The result tables of README and docs/ are copies of the tables the experiments write: this keeps them so.

A block ``<!-- table: PATH -->`` ... ``<!-- /table -->`` in README.md or a page of docs/ holds the first Markdown
table of ``PATH`` (a results file such as ``python/results/compare/compare.md``, written by ``make compare``).
Usage::

    python python/readme_tables.py           # rewrite every block of every page from its file
    python python/readme_tables.py --check   # exit 1 naming each block that differs (the test suite runs this)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- table: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def first_table(path: Path) -> str:
    """The first run of lines starting with ``|`` in ``path``, newline-terminated."""
    lines, found = [], False
    for line in path.read_text().splitlines():
        if line.startswith("|"):
            lines.append(line)
            found = True
        elif found:
            break
    if not lines:
        raise ValueError(f"{path} holds no Markdown table")
    return "\n".join(lines) + "\n"


def sync(readme: Path, check: bool) -> list[str]:
    """Rewrite (or with ``check`` only compare) every block; returns the paths whose block differed."""
    text = readme.read_text()
    stale: list[str] = []

    def replace(match: re.Match) -> str:
        table = first_table(ROOT / match["path"])
        if match["body"] != table:
            stale.append(match["path"])
        return match.group(1) + table + match.group(4)

    new = BLOCK.sub(replace, text)
    if not check and new != text:
        readme.write_text(new)
    return stale


def pages() -> list[Path]:
    """README.md and the pages of docs/: where result tables are kept."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="only report blocks that differ from their file")
    p.add_argument("--readme", type=Path, nargs="+", default=None, help="pages to sync (default: README and docs/)")
    args = p.parse_args(argv)
    stale = []
    for page in args.readme or pages():
        for path in sync(page, args.check):
            stale.append(path)
            print(f"{page.relative_to(ROOT) if page.is_relative_to(ROOT) else page}: the table from {path} differs "
                  "from the file" + ("" if args.check else ": rewritten"))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
