"""Mutation testing for weightax: small AST mutations, each run against the tests it needs.

Why not mutmut: it skips decorated functions, and every public weighting is
decorated (``@jax.jit``, ``@full_precision``). This script mutates the source
text of a module (decorators do not matter: the mutated module is imported and
jitted afresh), in a *copy* of the repository under ``--work`` (the checkout is
never touched), and runs ``pytest -x`` on the tests that exercise that module,
with a per-mutant timeout. A mutant is *killed* when the tests fail (or time
out, or the module no longer imports), and *survives* when they pass.

Mutation operators (one change per mutant, never inside docstrings, error
messages, annotations or ``__all__``):

- arithmetic: ``+ <-> -``, ``* <-> /``, ``** -> *``, ``// -> /``, ``% -> //``
- boolean arrays: ``& <-> |``, ``^ -> |``; Python ``and <-> or``
- comparisons: ``< -> <=``, ``<= -> <``, ``> -> >=``, ``>= -> >``, ``== <-> !=``,
  ``is <-> is not``, ``in <-> not in``
- unary: drop ``-x``, ``~x``, ``not x``
- constants: an int ``n -> n + 1``; a float ``x -> 2x`` (``0.0 -> 1.0``);
  ``True <-> False``
- calls/attributes: ``maximum <-> minimum``, ``max <-> min``, ``argmax <-> argmin``,
  ``any <-> all``; ``jnp.where(c, a, b) -> jnp.where(c, b, a)``

Mutants are run in a random order (``--seed``) so that any prefix is a uniform
sample; results are appended to ``--results`` (JSON lines) and a rerun skips the
mutants already there, so a run can be stopped and resumed. ``--report`` prints
the kill rate per module (with a 95% Wilson interval for a sample) and lists the
survivors with their source lines.

Usage::

    python tools/mutate.py --list                      # count the mutants per module
    python tools/mutate.py --budget-min 30 --timeout 300
    python tools/mutate.py --report

This is a measurement, not part of ``make test``; see TESTING.md.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT  # where the sources are read from: the snapshot under --work once it exists

# The modules under test and the tests each needs (fastest and most specific first,
# since pytest -x stops at the first failure). Doctests of the module itself run too.
# Every weighting gets the same selection: the unit tests of the weightings and their
# solvers, the per-method tests of the newer ones, and each method's documented scale on
# identical gradients (an independent closed form for every method).
WEIGHTING_TESTS = ["tests/test_weightings.py", "tests/test_weighting_properties.py",
                   "tests/test_methods_stateless.py", "tests/test_documented_scale.py"]
TARGETS: dict[str, list[str]] = {
    "weightax/weightings/_solvers.py": WEIGHTING_TESTS,
    "weightax/weightings/mgda.py": WEIGHTING_TESTS,
    "weightax/weightings/pcgrad.py": WEIGHTING_TESTS,
    "weightax/weightings/cagrad.py": WEIGHTING_TESTS,
    "weightax/weightings/imtl_g.py": WEIGHTING_TESTS,
    "weightax/weightings/upgrad.py": WEIGHTING_TESTS,
    "weightax/weightings/nash_mtl.py": WEIGHTING_TESTS,
    "weightax/weightings/__init__.py": WEIGHTING_TESTS,
    "weightax/aggregators/_base.py": [
        "tests/test_shared_mask.py",
        "tests/test_documented_scale.py",
        "tests/test_aggregator_conformance.py",
    ],
    "weightax/losses/ghm.py": [
        "tests/test_losses.py",
        "tests/test_losses_conformance.py",
        "tests/test_losses_validation.py",
    ],
}
# A ``-k`` expression per module, where the whole selection would cost minutes per surviving
# mutant. A narrower selection can only lower the kill rate, never raise it. ``_base.py``:
# the shared-mask and documented-scale tests (every method) and the conformance suite of
# methods that take each of its paths (Gramian weighting, plain combination, loss-based
# state, per-parameter state, extra batches, a non-Gramian projection). ``ghm.py``: the
# tests of GHM-C and GHM-R only.
TARGET_K: dict[str, str] = {
    "weightax/aggregators/_base.py": (
        "test_shared_mask or test_documented_scale or upgrad or linear_scalarization "
        "or dwa or uncertainty or db_mtl or sdmgrad or pcgrad or exported or _base "
        "or test_mutation_kills"),
    "weightax/losses/ghm.py": "ghm or test_mutation_kills",
}
# Modules added after this list was written are found here and get these tests.
TARGET_DIRS = {"weightax/weightings": WEIGHTING_TESTS}
# Tests written to kill survivors: tests/test_mutation_kills*.py (one file per group of
# modules), run first, since they are small and aimed at the mutants that got past the rest.
EXTRA_TESTS = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("tests/test_mutation_kills*.py"))

ARITH = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
         ast.Pow: ast.Mult, ast.FloorDiv: ast.Div, ast.Mod: ast.FloorDiv,
         ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd, ast.BitXor: ast.BitOr}
COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
           ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
           ast.In: ast.NotIn, ast.NotIn: ast.In}
NAMES = {"maximum": "minimum", "minimum": "maximum", "max": "min", "min": "max",
         "argmax": "argmin", "argmin": "argmax", "any": "all", "all": "any"}


# The kill tests written for each group of modules (``--kill-tests-only`` runs a survivor
# against its group's file and the shared one only: fewer tests can only kill fewer).
KILL_GROUPS = {"weightax/weightings/_solvers.py": "tests/test_mutation_kills_solvers.py",
               "weightax/weightings/": "tests/test_mutation_kills_weightings.py",
               "weightax/aggregators/_base.py": "tests/test_mutation_kills_base_ghm.py",
               "weightax/losses/ghm.py": "tests/test_mutation_kills_base_ghm.py"}


def kill_tests(path: str) -> list[str]:
  group = next((f for key, f in KILL_GROUPS.items() if path.startswith(key)), None)
  return [t for t in EXTRA_TESTS if t == "tests/test_mutation_kills.py" or t == group]


def targets() -> dict[str, list[str]]:
  out = dict(TARGETS)
  for d, tests in TARGET_DIRS.items():
    for p in sorted((SRC / d).glob("*.py")):
      out.setdefault(str(p.relative_to(SRC)), tests)
  return {k: v for k, v in out.items() if (SRC / k).exists()}


def _skipped_nodes(tree: ast.AST) -> set[int]:
  """ids of nodes never mutated: docstrings, raise messages, annotations, ``__all__``."""
  skip: set[int] = set()

  def mark(node: ast.AST | None) -> None:
    if node is not None:
      skip.update(id(n) for n in ast.walk(node))

  for node in ast.walk(tree):
    body = getattr(node, "body", None)
    if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
        body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
      mark(body[0])
    if isinstance(node, ast.Raise):
      mark(node.exc)  # the message; the condition that raises is mutated where it is
    if isinstance(node, ast.arg | ast.AnnAssign):
      mark(node.annotation)
    if isinstance(node, ast.FunctionDef):
      mark(node.returns)
      for dec in node.decorator_list:
        mark(dec)  # static_argnames and the like
    if isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
      mark(node)
    if isinstance(node, ast.JoinedStr):
      mark(node)
    if isinstance(node, ast.ImportFrom | ast.Import):
      mark(node)
  return skip


def _sites(tree: ast.AST) -> list[tuple[ast.AST, str]]:
  """Every (node, kind) that can be mutated, in a deterministic order."""
  skip = _skipped_nodes(tree)
  sites = []
  for node in ast.walk(tree):
    if id(node) in skip:
      continue
    if isinstance(node, ast.BinOp) and type(node.op) in ARITH:
      sites.append((node, "binop"))
    elif isinstance(node, ast.Compare):
      for i, op in enumerate(node.ops):
        if type(op) in COMPARE:
          sites.append((node, f"compare:{i}"))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.Invert | ast.Not):
      sites.append((node, "unary"))
    elif isinstance(node, ast.BoolOp):
      sites.append((node, "boolop"))
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
      sites.append((node, "const"))
    elif isinstance(node, ast.Attribute) and node.attr in NAMES:
      sites.append((node, "attr"))
    elif isinstance(node, ast.Name) and node.id in ("max", "min", "any", "all"):
      sites.append((node, "name"))
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr == "where" and len(node.args) == 3):
      sites.append((node, "where"))
  return sites


class _Replace(ast.NodeTransformer):
  def __init__(self, target: ast.AST, new: ast.AST):
    self.target, self.new = target, new

  def visit(self, node: ast.AST) -> ast.AST:
    if node is self.target:
      return self.new
    return super().visit(node)


def _mutate(node: ast.AST, kind: str) -> tuple[ast.AST, str]:
  """A mutated copy of ``node`` and a one-line description."""
  new = copy.copy(node)
  if kind == "binop":
    new.op = ARITH[type(node.op)]()
    desc = f"{type(node.op).__name__} -> {type(new.op).__name__}"
  elif kind.startswith("compare:"):
    i = int(kind.split(":")[1])
    ops = list(node.ops)
    ops[i] = COMPARE[type(ops[i])]()
    new.ops = ops
    desc = f"{type(node.ops[i]).__name__} -> {type(ops[i]).__name__}"
  elif kind == "unary":
    new = node.operand
    desc = f"drop {type(node.op).__name__}"
  elif kind == "boolop":
    new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    desc = f"{type(node.op).__name__} -> {type(new.op).__name__}"
  elif kind == "const":
    v = node.value
    if isinstance(v, bool):
      nv = not v
    elif isinstance(v, int):
      nv = v + 1
    else:
      nv = 2 * v if v != 0 else 1.0
    new = ast.Constant(nv)
    desc = f"{v!r} -> {nv!r}"
  elif kind == "attr":
    new.attr = NAMES[node.attr]
    desc = f".{node.attr} -> .{new.attr}"
  elif kind == "name":
    new = ast.Name(NAMES[node.id], node.ctx)
    desc = f"{node.id} -> {new.id}"
  elif kind == "where":
    new.args = [node.args[0], node.args[2], node.args[1]]
    desc = "where(c, a, b) -> where(c, b, a)"
  else:
    raise ValueError(kind)
  return ast.copy_location(new, node), desc


def mutants(path: str) -> list[dict]:
  """The mutants of one module: id, line, operator and the mutated line."""
  source = (SRC / path).read_text()
  tree = ast.parse(source)
  lines = source.splitlines()
  out = []
  for i, (node, kind) in enumerate(_sites(tree)):
    _, desc = _mutate(node, kind)
    out.append({"id": f"{path}:{i}", "file": path, "index": i, "line": node.lineno,
                "op": desc, "source": lines[node.lineno - 1].strip()})
  return out


def mutated_source(path: str, index: int) -> str:
  tree = ast.parse((SRC / path).read_text())
  node, kind = _sites(tree)[index]
  new, _ = _mutate(node, kind)
  tree = _Replace(node, new).visit(tree)
  return ast.unparse(ast.fix_missing_locations(tree))


def _prepare(work: Path, fresh: bool) -> None:
  """A snapshot of the package and the tests under ``work`` (the checkout is never edited).

  The snapshot is ``git archive HEAD``, kept between runs so that a resumed run numbers
  the mutants as before; ``--fresh`` takes a new one. The tests written to kill survivors
  (EXTRA_TESTS) are refreshed from the checkout every time.
  """
  global SRC
  if fresh and work.exists():
    shutil.rmtree(work)
  if not work.exists():
    # The committed tree (HEAD), not the working tree: files being edited may not agree.
    work.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    (work / "SNAPSHOT").write_text(head + "\n")  # the commit every mutant of this work dir is of
  for t in EXTRA_TESTS:
    if (ROOT / t).exists():
      shutil.copy2(ROOT / t, work / t)
  SRC = work


def _pytest(work: Path, tests: list[str], doctest: str | None, timeout: float, *,
            stop: bool = True, deselect: list[str] = (), keyword: str | None = None,
            cache: Path | None = None) -> tuple[str, float, list[str]]:
  """Runs the tests in the snapshot: (status, seconds, the ids of failing tests)."""
  # A persistent compilation cache shared by all runs: programs that the mutation does
  # not touch compile once (it never serves a stale program: the key is the program).
  env = dict(os.environ, PYTHONPATH=str(work), JAX_PLATFORMS="cpu",
             PYTHONDONTWRITEBYTECODE="1",
             JAX_COMPILATION_CACHE_DIR=str(cache or work / ".jax-cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  files = [t for t in tests if (work / t).exists()]
  cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:randomly",
         "-p", "no:cacheprovider", "-n", "0", *files]
  if stop:
    cmd.insert(3, "-x")
  for d in deselect:
    cmd += ["--deselect", d]
  if keyword:
    cmd += ["-k", keyword]
  if doctest:
    cmd += ["--doctest-modules", doctest]
  start = time.time()
  try:
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True,
                          timeout=timeout)
  except subprocess.TimeoutExpired:
    return "timeout", time.time() - start, []
  status = {0: "survived", 1: "killed", 2: "killed"}.get(proc.returncode, "error")
  if status == "error":
    print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
  failing = [line.split()[1] for line in proc.stdout.splitlines()
             if line.startswith(("FAILED ", "ERROR ")) and len(line.split()) > 1]
  return status, time.time() - start, failing


def _locked(path: Path):
  """An exclusive lock on ``path`` (created if missing), for files shared by workers."""
  import contextlib
  import fcntl

  @contextlib.contextmanager
  def ctx():
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
      fcntl.flock(f, fcntl.LOCK_EX)
      try:
        yield
      finally:
        fcntl.flock(f, fcntl.LOCK_UN)
  return ctx()


def run(args: argparse.Namespace) -> None:
  results = Path(args.results)
  recs = [json.loads(line) for line in results.read_text().splitlines()] if (
      results.exists()) else []
  latest = {r["id"]: r for r in recs}
  done = set(latest)
  if args.rerun_survivors:  # after adding tests: run the survivors again (the new result wins)
    done = {i for i, r in latest.items() if r["status"] != "survived"}
  work = Path(args.work)
  _prepare(work, args.fresh)
  snap = work / "SNAPSHOT"
  commit = snap.read_text().strip() if snap.exists() else "unknown"
  table = targets()
  pool = [m for path in table for m in mutants(path)]
  if args.only:
    pool = [m for m in pool if any(s in m["file"] for s in args.only)]
  random.Random(args.seed).shuffle(pool)
  todo = [m for m in pool if m["id"] not in done]
  if args.rerun_survivors:
    todo = [m for m in todo if m["id"] in latest]
  shard, shards = (int(x) for x in args.shard.split("/"))
  # Worker ``shard`` of ``shards`` takes every shards-th mutant of the seeded order, so the
  # workers together still run a prefix of it (a uniform sample) and never the same mutant.
  todo = todo[shard::shards]
  print(f"{len(pool)} mutants, {len(done & {m['id'] for m in pool})} done before, "
        f"{len(todo)} to go for worker {shard}/{shards}", flush=True)
  deadline = time.time() + 60 * args.budget_min
  cache = Path(args.cache) if args.cache else None
  # Baseline (once per test selection): the tests that fail on the unmutated snapshot are
  # deselected for its mutants (and listed in the baseline file), or every mutant of those
  # modules would count as killed. Workers share the file; worker i computes the
  # selections i, i + shards, ... of the modules in the pool, then waits for the others.
  base_file = Path(args.baseline) if args.baseline else work / "baseline.json"
  base_lock = base_file.with_suffix(".lock")

  def selection(path: str) -> tuple[list[str], str | None, str]:
    if args.kill_tests_only:  # the rest of the selection already ran on these mutants
      tests = kill_tests(path)
      return tests, None, " ".join(tests)
    tests = EXTRA_TESTS + table[path]
    keyword = TARGET_K.get(path)
    return tests, keyword, " ".join(tests) + (f" -k {keyword}" if keyword else "")

  def load_base() -> dict:
    with _locked(base_lock):
      return json.loads(base_file.read_text()) if base_file.exists() else {}

  def compute_base(path: str) -> None:
    tests, keyword, sel = selection(path)
    if sel in load_base():
      return
    print(f"baseline for {path} ...", flush=True)
    status, secs, failing = _pytest(work, tests, None, 6 * args.timeout, stop=False,
                                    keyword=keyword, cache=cache)
    with _locked(base_lock):
      base = json.loads(base_file.read_text()) if base_file.exists() else {}
      base[sel] = {"status": status, "seconds": round(secs, 1), "failing": failing}
      base_file.write_text(json.dumps(base, indent=1))
    print(f"baseline {status} in {secs:.0f}s; failing without a mutation: {failing}",
          flush=True)

  needed = sorted({selection(m["file"])[2]: m["file"] for m in todo}.items())
  for j, (_, path) in enumerate(needed):
    if j % shards == shard:
      compute_base(path)
  while not all(sel in load_base() for sel, _ in needed):
    time.sleep(5)  # another worker is still computing its baselines
  base = load_base()

  def deselected(path: str) -> list[str]:
    sel = selection(path)[2]
    if base[sel]["status"] in ("timeout", "error") or len(base[sel]["failing"]) > 10:
      sys.exit(f"the tests for {path} do not run without a mutation ({sel}); fix that first")
    return base[sel]["failing"]

  for n, m in enumerate(todo[: args.limit], 1):
    if time.time() > deadline:
      print("time budget reached", flush=True)
      break
    skip = deselected(m["file"])
    target = work / m["file"]
    original = target.read_text()
    target.write_text(mutated_source(m["file"], m["index"]))
    try:
      tests, keyword, _ = selection(m["file"])
      status, secs, _ = _pytest(work, tests, m["file"], args.timeout, deselect=skip,
                                keyword=keyword, cache=cache)
    finally:
      target.write_text(original)
    rec = {**m, "status": status, "seconds": round(secs, 1), "commit": commit}
    with _locked(results.with_suffix(".lock")), results.open("a") as f:
      f.write(json.dumps(rec) + "\n")
    print(f"[{n}/{len(todo)}] {status:8s} {secs:6.1f}s {m['file']}:{m['line']} {m['op']}: "
          f"{m['source'][:70]}", flush=True)


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
  if n == 0:
    return 0.0, 1.0
  p = k / n
  mid = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return mid - half, mid + half


def report(args: argparse.Namespace) -> None:
  global SRC
  if Path(args.work).exists():
    SRC = Path(args.work)
  recs = [json.loads(line) for line in Path(args.results).read_text().splitlines()]
  latest = {r["id"]: r for r in recs}  # a rerun of a mutant (after a new test) replaces it
  totals = {path: len(mutants(path)) for path in targets()
            if not args.only or any(s in path for s in args.only)}
  print("| module | mutants | run | killed | survived | kill rate (95% CI) |")
  print("|---|---|---|---|---|---|")
  all_k = all_n = 0
  for path, total in totals.items():
    rs = [r for r in latest.values() if r["file"] == path]
    k = sum(r["status"] in ("killed", "timeout") for r in rs)
    s = sum(r["status"] == "survived" for r in rs)
    all_k, all_n = all_k + k, all_n + k + s
    lo, hi = _wilson(k, k + s)
    rate = f"{k / (k + s):.0%} ({lo:.0%}-{hi:.0%})" if k + s else "-"
    print(f"| {path} | {total} | {len(rs)} | {k} | {s} | {rate} |")
  lo, hi = _wilson(all_k, all_n)
  if all_n:
    print(f"| all | {sum(totals.values())} | {all_n} | {all_k} | {all_n - all_k} | "
          f"{all_k / all_n:.0%} ({lo:.0%}-{hi:.0%}) |")
  commits = sorted({r.get("commit", "unknown") for r in latest.values()
                    if not args.only or any(s in r["file"] for s in args.only)})
  timeouts = sum(r["status"] == "timeout" for r in latest.values() if r["file"] in totals)
  print(f"\nsnapshot commits: {', '.join(commits)}; timeouts (counted as killed): {timeouts}")
  print("\nSurvivors:")
  for r in latest.values():
    if r["status"] == "survived" and r["file"] in totals:
      print(f"- {r['id']} (line {r['line']}) {r['op']}: `{r['source']}`")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--list", action="store_true", help="count the mutants per module and exit")
  p.add_argument("--report", action="store_true", help="summarise --results and exit")
  p.add_argument("--show", help="print the mutated source of one mutant id (file:index)")
  p.add_argument("--results", default="/tmp/weightax-mutants.jsonl",
                 help="JSON-lines results file, appended to (default: %(default)s)")
  p.add_argument("--work", default="/tmp/weightax-mutate",
                 help="directory for the copy of the repository (default: %(default)s)")
  p.add_argument("--seed", type=int, default=0, help="order of the mutants (default: %(default)s)")
  p.add_argument("--limit", type=int, default=None, help="run at most this many mutants")
  p.add_argument("--budget-min", type=float, default=120.0,
                 help="stop starting mutants after this many minutes (default: %(default)s)")
  p.add_argument("--timeout", type=float, default=600.0,
                 help="seconds per mutant before it counts as killed (default: %(default)s)")
  p.add_argument("--rerun-survivors", action="store_true",
                 help="run only the survivors in --results again (e.g. after adding tests)")
  p.add_argument("--kill-tests-only", action="store_true",
                 help="with --rerun-survivors: run only tests/test_mutation_kills*.py (the rest "
                      "of each survivor's selection passed already, and is unchanged)")
  p.add_argument("--fresh", action="store_true",
                 help="take a new snapshot of the repository (renumbers the mutants)")
  p.add_argument("--only", nargs="*", help="substrings of module paths to restrict to")
  p.add_argument("--shard", default="0/1",
                 help="run as worker i of n (i/n), each with its own --work (default: %(default)s)")
  p.add_argument("--baseline", default=None,
                 help="baseline file shared by workers (default: baseline.json under --work)")
  p.add_argument("--cache", default=None,
                 help="JAX compilation cache shared by workers (default: .jax-cache under --work)")
  args = p.parse_args()
  if args.list:
    if Path(args.work).exists():
      global SRC
      SRC = Path(args.work)
    for path in targets():
      print(f"{len(mutants(path)):5d} {path}")
    return
  if args.show:
    _prepare(Path(args.work), False)
    path, index = args.show.rsplit(":", 1)
    print(mutated_source(path, int(index)))
    return
  if args.report:
    report(args)
    return
  run(args)


if __name__ == "__main__":
  main()
