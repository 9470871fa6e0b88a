"""The documentation cannot fall behind the code or point at files that do not exist.

- Every ```python block of ``docs/**/*.md`` runs (the blocks of one page in order, in
  one namespace, as a reader would paste them); shell blocks are not run.
- Every repository file that the library, the studies, the benchmarks, the README, the
  documentation or the tests name exists (issue 7 item 20: the repository stands alone).
- The pages that ``docs/conf.py`` fills from ``weightax/_methods.py`` have their markers.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def python_blocks(page: Path) -> list[str]:
  return [body for lang, body in _FENCE.findall(page.read_text()) if lang == "python"]


def test_the_docs_have_python_examples():
  # Guards the extraction itself: a broken regex would silently run nothing.
  assert sum(len(python_blocks(p)) for p in PAGES) >= 8
  assert python_blocks(DOCS / "getting_started.md")


@pytest.mark.parametrize(
    "page", [p for p in PAGES if python_blocks(p)], ids=lambda p: str(p.relative_to(DOCS))
)
def test_python_blocks_run(page):
  namespace: dict = {"__name__": f"docs.{page.stem}"}
  for i, block in enumerate(python_blocks(page)):
    code = compile(block, f"{page.relative_to(ROOT)} (python block {i + 1})", "exec")
    exec(code, namespace)  # noqa: S102 - the documentation's own examples


# ------------------------------------------------------------------ referenced files

# The top-level folders of the repository: a path that starts with one of them names a
# file of this repository.
TOP = ("weightax", "experiments", "docs", "tests", "benchmarks", "notebooks", ".ci")
SCANNED = [
    *sorted((ROOT / "weightax").rglob("*.py")),
    *sorted((ROOT / "experiments").glob("*.py")),
    *sorted((ROOT / "benchmarks").glob("*.py")),
    *sorted(p for p in (ROOT / "tests").glob("*.py") if p.name != "test_docs.py"),
    *sorted((ROOT / "notebooks").glob("*.ipynb")),
    *[p for p in (ROOT / "docs").rglob("*") if p.suffix in (".md", ".py", ".txt")
      and "_build" not in p.parts],
    ROOT / "README.md",
    ROOT / "BENCHMARKS.md",
    ROOT / "Makefile",
    ROOT / ".ci" / "run",
]
# Paths of *other* repositories that a docstring cites as the source of a convention.
EXTERNAL = {
    "experiments/toy/problem.py",  # the Nash-MTL repository's toy problem
}
_PATH = re.compile(
    r"(?<![\w/.<>-])((?:\.\./)*(?:[\w.-]+/)*[\w-]+\.(?:md|py|ipynb|toml|txt|png|cfg|yaml))(?![\w/])"
)
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _named_paths(path: Path) -> list[tuple[str, Path]]:
  """``(as written, resolved)`` for each repository file that ``path`` names."""
  text = path.read_text(errors="replace")
  found = []
  for m in _PATH.finditer(text):
    name = m.group(1)
    before = text[max(0, m.start() - 6):m.start()]
    if "--out" in before:  # an output path given as an example option value
      continue
    first = name.split("/")[0]
    if "/" not in name and re.fullmatch(r"[A-Z][A-Z_]*\.md", name):
      # A top-level document (README.md, BENCHMARKS.md, ...): at the root or under docs/.
      found.append((name, ROOT / name if (ROOT / name).exists() else DOCS / name))
    elif name.startswith("../"):
      found.append((name, (path.parent / name).resolve()))  # a relative link of a page
    elif first in TOP and "/" in name:
      found.append((name, ROOT / name))
  if path.suffix == ".md":
    for m in _LINK.finditer(text):
      target = m.group(1)
      if re.match(r"[a-z]+:", target):
        continue
      found.append((target, (path.parent / target).resolve()))
  return found


def test_scanned_files_exist():
  missing = [p for p in SCANNED if not p.exists()]
  assert not missing, missing


def test_every_named_file_exists():
  missing = []
  for path in SCANNED:
    for name, resolved in _named_paths(path):
      if name in EXTERNAL or "<" in name:
        continue
      if not resolved.exists():
        missing.append(f"{path.relative_to(ROOT)} names {name}")
  assert not missing, "\n".join(missing)


def test_the_path_check_can_fail(tmp_path):
  fake = tmp_path / "x.md"
  fake.write_text("See DESIGN.md, weightax/nowhere.py and [a page](nowhere.md); "
                  "runs/x/summary.md is an output; weightax/_methods.py exists.")
  names = {n for n, r in _named_paths(fake) if not r.exists()}
  assert names == {"DESIGN.md", "weightax/nowhere.py", "nowhere.md"}


def test_generated_tables_have_their_markers():
  text = (DOCS / "methods.md").read_text()
  assert "<!-- method-table -->" in text and "<!-- method-notes -->" in text
  conf = (DOCS / "conf.py").read_text()
  assert "_methods.markdown_table" in conf


def test_method_table_renders_every_method():
  from weightax import _methods

  table = _methods.markdown_table()
  for m in _methods.METHODS:
    assert f"weightax.{m.name}`" in table
    for hp in _methods.hyperparameters(m):
      assert f"`{hp}=" in table, (m.name, hp)
