"""Shared test settings: JAX on the CPU, float32 by default, deterministic; how the suite
shares compiled programs and spreads over the xdist workers (see TESTING.md)."""

import os
import shutil
import tempfile

import jax
import pytest

# Tests assert dtypes (float32, bfloat16); x64 would change every default dtype.
jax.config.update("jax_enable_x64", False)

# On a GPU, JAX's default float32 matrix products round their inputs to TF32 (10-bit
# mantissa), which moves results by ~1e-4 relative: more than the float32 tolerances of
# the references here, which check the mathematics in float32. Measured on an H200 (JAX
# 0.11.2): 14 of the 34 tests of test_gramian_free/test_jacobian/test_sweep failed by
# 2e-5 to 3e-3 relative under the default and pass under "highest". Where JAX already
# computes float32 products in float32 (the CPU), this changes nothing. Users' models keep JAX's
# default; BENCHMARKS.md reports the GPU's agreement under both.
if jax.default_backend() != "cpu":
  jax.config.update("jax_default_matmul_precision", "highest")

# One persistent compilation cache per test session, shared by the xdist workers. Each
# test builds its aggregator afresh, so jit sees a new function and traces again, but the
# program it lowers is often one compiled before (the same method on the same shapes, by
# another test or by the other worker; an eager `lax.cond` compiles the same program at
# every call); XLA then loads it instead of compiling it. The key is the program, its
# compile options and the XLA flags, so a hit is never a different program. A fresh
# directory each session, removed at the end, so every run starts cold, as on a fresh
# clone. The workers find it through WEIGHTAX_TEST_JAX_CACHE; subprocesses that tests start
# (studies, two-device runs) do not read it and run as a user's would. A cache set by the
# caller (JAX_COMPILATION_CACHE_DIR, e.g. tools/mutate.py's across mutants) is used as is.
_OWN_CACHE = None
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
  if not os.environ.get("WEIGHTAX_TEST_JAX_CACHE"):  # the controller, or a run without xdist
    _OWN_CACHE = tempfile.mkdtemp(prefix="weightax-jax-cache-")
    os.environ["WEIGHTAX_TEST_JAX_CACHE"] = _OWN_CACHE
  jax.config.update("jax_compilation_cache_dir", os.environ["WEIGHTAX_TEST_JAX_CACHE"])
  # Most test programs compile in well under the default 1 s threshold.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def pytest_unconfigure(config):
  # Only the process that made the directory removes it (the controller under xdist).
  if _OWN_CACHE is not None and not hasattr(config, "workerinput"):
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


# How `make test` (`-n 2 --dist loadfile --no-loadscope-reorder`) spreads the suite over
# its workers. Every test file is one unit of work, so that its module-level caches and
# fixtures are built once, except the files in SPLIT, which become one unit per method (the
# first parametrize id, e.g. `test_dtype_preserved[cagrad-f32]` -> cagrad): the aggregator
# conformance suite is the largest file, and as one unit it would run on one worker alone.
# Units start with the few-test files that run one long program each (a subprocess, a
# notebook), which xdist would otherwise start last, leaving one worker idle at the end,
# then the largest units first (by number of tests). The grouping decides only where and
# when a test runs, never what it checks.
SPLIT = ("tests/test_aggregator_conformance.py",)
START_FIRST = (  # CPU seconds measured on 28 Nov (TESTING.md)
    "tests/test_notebooks.py",  # 57 s, 3 tests
    "tests/test_sharding.py",  # 46 s, 1 test
    "tests/test_meta_weighting_study.py",  # 38 s, 5 tests
    "tests/test_imbalance_study.py",  # 32 s, 7 tests
    "tests/test_sweep_distributed.py",  # 10 s here, 250 s waiting for its two processes
)


def _unit(nodeid):
  """The unit of work of a test, from its node id (the xdist controller has nothing else)."""
  path, _, rest = nodeid.partition("::")
  if path in SPLIT and "[" in rest:
    return f"{path}::{rest.split('[', 1)[1].split('-', 1)[0].rstrip(']')}"
  return path


def pytest_collection_modifyitems(config, items):
  # In the xdist workers only (the controller schedules from their order): the units in the
  # order above; a test keeps its place within its unit.
  if not hasattr(config, "workerinput"):
    return
  units = [_unit(item.nodeid) for item in items]
  size = {}
  for u in units:
    size[u] = size.get(u, 0) + 1
  first = {path: i for i, path in enumerate(START_FIRST)}
  order = sorted(range(len(items)), key=lambda i: (
      first.get(units[i].split("::", 1)[0], len(first)), -size[units[i]], units[i], i))
  items[:] = [items[i] for i in order]


@pytest.hookimpl(optionalhook=True)  # a plain run (-p no:xdist) has no such hook
def pytest_xdist_make_scheduler(config, log):
  """Under --dist loadfile, the units above instead of whole files."""
  if config.getvalue("dist") != "loadfile":
    return None
  from xdist.scheduler import LoadFileScheduling

  class Units(LoadFileScheduling):
    def _split_scope(self, nodeid):
      return _unit(nodeid)

  return Units(config, log)
