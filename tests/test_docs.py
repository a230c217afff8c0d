"""The repository contains every document its code and its pages refer to.

Two checks, both pure file reading:

- every ``*.md`` path named in the package, the tests, the C++ sources, the benchmarks, the example programs, the
  Makefile, CI and the Markdown pages resolves to a file of the repository, relative to the repository root or to
  the referring file's folder. A bare name of a document that is not in the repository fails, with file:line.
  Markdown files the programs *write* (reports, run folders) are listed in :data:`GENERATED` with their writer;
  names built at run time (``<name>.md``, ``gpu-*.md``, ``{stem}.md``) and absolute paths are not references.
- a reference with an anchor (``docs/rules.md#residual-add``) names a heading of that page;
- every relative link ``[text](target)`` of ``README.md``, ``benchmarks/README.md`` and ``docs/*.md`` resolves to
  a file or folder, and its ``#anchor``, if any, to a heading of the Markdown file it points to.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Where references are looked for: (folder, glob) pairs relative to the repository root.
SOURCES = (
    ("isnet_kernels", "**/*.py"),
    ("tests", "**/*.py"),
    ("csrc", "**/*"),
    ("benchmarks", "**/*.py"),
    ("benchmarks", "*.sh"),
    ("benchmarks", "*.md"),
    ("python", "**/*.py"),
    ("docs", "*.md"),
    (".ci", "*"),
    (".", "Makefile"),
    (".", "README.md"),
    (".", "setup.py"),
    (".", "pyproject.toml"),
)

#: Markdown files the project's programs write (outputs, not documents), with what writes them. A reference to one
#: of these is not checked for existence: the file appears when its program runs.
GENERATED = {
    "demo/report.md": "python/biased_digits.py (make demo)",
    "OUT/report.md": "python/biased_digits.py --out OUT",
    "report.md": "python/biased_digits.py, into its output folder",
    "OUT/study.md": "python/defaults_study.py --out OUT",
    "study.md": "python/defaults_study.py, into its output folder",
    "OUT/compare.md": "python/compare.py --out OUT",
    "compare.md": "python/compare.py, into its output folder",
    "OUT/check.md": "python/defaults_check.py --out OUT",
    "check.md": "python/defaults_check.py, into its output folder",
    "empty.md": "tests/test_readme_results.py, a file without a table in a temporary folder",
    "eval-best.md": "isnet eval / isnet_kernels.train.write_eval, beside the checkpoint evaluated",
    "roofline.md": "benchmarks/roofline.py, into benchmarks/results/",
    "targets.md": "benchmarks/report.py, into benchmarks/results/",
    "latest.md": "benchmarks/report.py for results/latest.json",
    "latest-targets.md": "benchmarks/report.py for results/latest.json",
    "gpu-targets.md": "benchmarks/run_gpu.sh",
    "compile.md": "python -m isnet_kernels.backends.triton.aot (make aot-check), into benchmarks/results/aot/",
    "cuda.md": "csrc/cuda/compile_check.py (make cuda-compile), into benchmarks/results/aot/",
    "env.md": "benchmarks/gpu_env.py (make gpu-check), into benchmarks/results/gpu/",
    "bandwidth.md": "benchmarks/bandwidth.py (make gpu-check), into benchmarks/results/gpu/",
    "zoo.md": "python/zoo.py (make zoo), into its output folder",
    "summary.md": "benchmarks/gpu_summary.py (make gpu-check), into benchmarks/results/gpu/",
}

# A path ending in .md that starts at a word boundary: not inside an absolute path, a URL or a name assembled at
# run time (``<out-dir>/<name>.md``, ``{prefix}targets.md``, ``gpu-*.md``).
MD_PATH = re.compile(r"(?<![\w./\-<>*{}$~])((?:[\w.\-]+/)*[\w\-]+\.md)(?:#([\w\-]+))?(?![\w/])")
# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def _source_files() -> Iterator[Path]:
    seen: set[Path] = set()
    for folder, pattern in SOURCES:
        base = ROOT / folder
        if not base.exists():
            continue
        for path in sorted(base.glob(pattern)):
            if path.is_file() and path not in seen and not _ignored(path):
                seen.add(path)
                yield path


def _ignored(path: Path) -> bool:
    """Build outputs, caches, compiled objects, and this file (its docstring names example patterns)."""
    rel = path.relative_to(ROOT)
    if path == Path(__file__).resolve():
        return True
    if any(part in ("__pycache__", "build", ".venv", "results") or part.endswith(".egg-info") for part in rel.parts):
        return True
    return path.suffix in (".so", ".o", ".pyc", ".png", ".json")


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        return []


def _target(name: str, referrer: Path) -> Path | None:
    """The file ``name`` refers to, relative to the repository root or to the referring file's folder."""
    for base in (ROOT, referrer.parent):
        if (base / name).is_file():
            return base / name
    return None


def _resolves(name: str, referrer: Path) -> bool:
    return _target(name, referrer) is not None


def md_references() -> list[tuple[Path, int, str, str | None]]:
    """Every ``*.md`` path named in :data:`SOURCES`: (file, line number, name, anchor or None)."""
    found = []
    for path in _source_files():
        for number, line in enumerate(_lines(path), 1):
            for match in MD_PATH.finditer(line):
                found.append((path, number, match.group(1), match.group(2)))
    return found


def test_the_scan_sees_the_sources() -> None:
    """The scan reads the package, the tests and this repository's README (so an empty scan cannot pass)."""
    files = {p.relative_to(ROOT).as_posix() for p in _source_files()}
    assert "README.md" in files
    assert "isnet_kernels/ops/conv.py" in files
    assert "tests/conftest.py" in files
    assert any(name.startswith("csrc/") for name in files)
    assert "tests/test_docs.py" not in files


def test_the_pattern_tells_references_from_built_names() -> None:
    """What the scan counts as a reference, and what it leaves alone."""
    def names(text: str) -> list[str]:
        return [m.group(1) for m in MD_PATH.finditer(text)]

    assert names("see docs/rules.md and NOTES.md.") == ["docs/rules.md", "NOTES.md"]
    assert names("(`docs/kernels.md#residual-add`)") == ["docs/kernels.md"]
    assert [m.group(2) for m in MD_PATH.finditer("docs/kernels.md#residual-add, x.md")] == ["residual-add", None]
    assert names("out / '<name>.md', f'{stem}.md', gpu-*.md, /tmp/x.md, https://host/a/README.md") == []


def test_resolution_is_relative_to_the_root_or_the_referring_folder() -> None:
    assert _resolves("docs/rules.md", ROOT / "README.md")
    assert _resolves("rules.md", ROOT / "docs" / "README.md")
    assert _resolves("README.md", ROOT / "benchmarks" / "conftest.py")
    assert not _resolves("rules.md", ROOT / "README.md")
    assert not _resolves("NO_SUCH_DOC.md", ROOT / "isnet_kernels" / "ops" / "conv.py")


def test_every_named_markdown_file_exists() -> None:
    """Every ``*.md`` path in the sources names a file of the repository (or a file a program writes)."""
    refs = md_references()
    assert refs, "no *.md reference found at all: the scan is broken"
    missing = [f"{path.relative_to(ROOT)}:{number}: {name}" for path, number, name, _ in refs
               if name not in GENERATED and not _resolves(name, path)]
    assert not missing, (f"{len(missing)} reference(s) to Markdown files that are not in the repository (write the "
                         "document, fix the path, or list a generated file in GENERATED):\n" + "\n".join(missing))


def test_every_named_anchor_exists() -> None:
    """A reference such as ``docs/rules.md#residual-add`` in a source names a heading of that page."""
    bad = []
    for path, number, name, anchor in md_references():
        target = _target(name, path)
        if anchor and target is not None and anchor not in anchors(target):
            bad.append(f"{path.relative_to(ROOT)}:{number}: {name}#{anchor}")
    assert not bad, f"{len(bad)} reference(s) to headings that do not exist:\n" + "\n".join(bad)


def test_generated_names_are_still_used() -> None:
    """Each entry of GENERATED is named somewhere (a stale entry would hide a future broken reference)."""
    named = {name for _, _, name, _ in md_references()}
    unused = sorted(set(GENERATED) - named)
    assert not unused, f"GENERATED lists names no source mentions any more: {unused}"


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped (not ``-`` and ``_``), spaces to ``-``."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings (repeated headings get ``-1``, ``-2``, ... as on GitHub)."""
    out: set[str] = set()
    counts: dict[str, int] = {}
    fenced = False
    for line in _lines(path):
        if FENCE.match(line):
            fenced = not fenced
            continue
        heading = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if fenced or not heading:
            continue
        base = slug(heading.group(2))
        n = counts.get(base, 0)
        counts[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def _pages() -> list[Path]:
    pages = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [p for p in pages if p.is_file()]


def links(path: Path) -> Iterator[tuple[int, str]]:
    """Relative link targets of a Markdown page, outside code blocks and code spans: (line number, target)."""
    fenced = False
    for number, line in enumerate(_lines(path), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        for match in LINK.finditer(re.sub(r"`[^`]*`", "", line)):
            target = match.group(1)
            if re.match(r"^[a-z][a-z0-9+.\-]*:", target, re.I):  # http:, https:, mailto:
                continue
            yield number, target


def test_the_docs_pages_exist() -> None:
    """The specification pages the code refers to are in the repository."""
    for name in ("README.md", "rules.md", "kernels.md", "isnet.md", "differences.md", "extending.md"):
        assert (ROOT / "docs" / name).is_file(), f"docs/{name} is missing"


def test_slug_follows_github() -> None:
    assert slug("Max-pool, winner-take-all") == "max-pool-winner-take-all"
    assert slug("Z^B first layer (`zbox.py`)") == "zb-first-layer-zboxpy"
    assert slug("Residual add `y = x + f`") == "residual-add-y--x--f"


def broken_links(pages: list[Path]) -> tuple[int, list[str]]:
    """``(number of relative links, the broken ones as 'page:line: target (why)')``."""
    bad = []
    count = 0
    for page in pages:
        for number, target in links(page):
            count += 1
            where = f"{_shown(page)}:{number}: {target}"
            file_part, _, anchor = target.partition("#")
            dest = page if not file_part else (page.parent / file_part).resolve()
            if not dest.exists():
                bad.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{where} (no heading with anchor #{anchor} in {_shown(dest)})")
    return count, bad


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def test_broken_links_are_found(tmp_path: Path) -> None:
    """The link check tells a good link from a missing file and from a missing anchor."""
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n")
    page = tmp_path / "page.md"
    page.write_text("# Title\n[ok](other.md#a-section) [self](#title) ![img](other.md) [web](https://x.org/y.md)\n"
                    "[gone](missing.md) [bad anchor](other.md#no-such-section)\n"
                    "```\n[in code](nowhere.md)\n```\n")
    count, bad = broken_links([page])
    assert count == 5
    assert [b.split(": ", 1)[1] for b in bad] == [
        "missing.md (no such file)",
        f"other.md#no-such-section (no heading with anchor #no-such-section in {tmp_path / 'other.md'})"]


def test_every_relative_link_resolves() -> None:
    """Links between the pages, and to files of the repository, point to something that exists."""
    count, bad = broken_links(_pages())
    assert count > 0, "no relative link found: the scan is broken"
    assert not bad, f"{len(bad)} broken link(s):\n" + "\n".join(bad)
