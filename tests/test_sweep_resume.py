"""Resumable sweeps: SIGKILL mid-sweep, resume computes only what is missing, bitwise equal."""

import importlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import weightax as wx

sm = importlib.import_module("weightax.sweep")
ckpt = importlib.import_module("weightax._checkpoint")

X = jnp.linspace(-1.0, 1.0, 24).reshape(8, 3)
Y = jnp.sin(X @ jnp.array([1.0, -2.0, 0.5]))
GRID = {"lr": [0.05, 0.1, 0.2, 0.3, 0.4, 0.5], "w": [0.5, 2.0]}  # 12 configurations
N, CHUNK = 12, 2


def _nap(_):
  # Makes a killed run's chunks last long enough to kill it between two of them; the
  # sleep is host-side only, so the compiled program is the same with or without it.
  if os.environ.get("SWEEP_TEST_NAP"):
    time.sleep(float(os.environ["SWEEP_TEST_NAP"]))


def train(hp, key):
  """Gradient descent on a tiny regression from a random start; curve of 10 losses."""
  jax.debug.callback(_nap, hp["lr"])
  w0 = jax.random.normal(key, (3,))

  def body(w, _):
    loss, g = jax.value_and_grad(lambda w: hp["w"] * jnp.mean((jnp.tanh(X @ w) - Y) ** 2))(w)
    return w - hp["lr"] * g, loss

  w, curve = jax.lax.scan(body, w0, None, length=10)
  return {"curve": curve, "w": w}


CHILD = textwrap.dedent(
    """
    import importlib, json, sys
    import numpy as np
    sys.path.insert(0, sys.argv[4])
    from test_sweep_resume import CHUNK, GRID, STEP_KW, stepwise, train
    import weightax as wx
    sm = importlib.import_module("weightax.sweep")
    info = {}
    for mode in sys.argv[1].split(","):
      if mode == "train":
        res = wx.sweep(train, GRID, seeds=1, chunk_size=CHUNK, progress=True,
                       checkpoint_dir=sys.argv[2] + "/train")
      else:
        res = wx.sweep(stepwise(), GRID, progress=False, checkpoint_dir=sys.argv[2] + "/step",
                       **STEP_KW)
      np.savez(f"{sys.argv[3]}-{mode}.npz", curve=res.metrics["curve"], w=res.metrics["w"])
    print(json.dumps({"chunks_run": sm._CHUNKS_RUN, "segments_run": sm._SEGMENTS_RUN}),
          flush=True)
    """
)


def _child(mode, ckdir, out, nap=""):
  env = dict(os.environ, JAX_PLATFORMS="cpu", SWEEP_TEST_NAP=nap)
  env.pop("XLA_FLAGS", None)
  return subprocess.Popen(
      [sys.executable, "-c", CHILD, mode, str(ckdir), str(out), os.path.dirname(__file__)],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(p):
  out, err = p.communicate(timeout=300)
  assert p.returncode == 0, err[-3000:]
  return json.loads(out.strip().splitlines()[-1]), err


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """Uninterrupted runs of both sweeps in a fresh process, started early to overlap."""
  d = tmp_path_factory.mktemp("ref")
  proc = _child("train,step", d, d / "ref")
  done = {}

  def get():
    if not done:
      done["info"], _ = _finish(proc)
    return done["info"], {m: np.load(d / f"ref-{m}.npz") for m in ("train", "step")}

  yield get
  if proc.poll() is None:
    proc.kill()


def _kill_when(proc, ready, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline and not ready():
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    time.sleep(0.01)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL


def _chunk_files(d):
  return sorted(f for f in os.listdir(d) if f.startswith("chunk-"))


def test_sigkill_mid_sweep_then_resume_recomputes_only_missing_chunks(tmp_path, reference):
  d = tmp_path / "train"
  victim = _child("train", tmp_path, tmp_path / "never", nap="0.15")
  _kill_when(victim, lambda: d.exists() and len(_chunk_files(d)) >= 2)
  done = _chunk_files(d)
  assert 2 <= len(done) < N // CHUNK, done  # killed mid-sweep
  stamps = {f: os.stat(d / f).st_mtime_ns for f in done}

  info, err = _finish(_child("train", tmp_path, tmp_path / "resumed"))
  assert info["chunks_run"] == N // CHUNK - len(done)  # only the unfinished chunks ran
  assert {f: os.stat(d / f).st_mtime_ns for f in done} == stamps  # not rewritten
  assert _chunk_files(d) == [f"chunk-{c:06d}.npz" for c in range(N // CHUNK)]
  assert not [f for f in os.listdir(d) if f.startswith(".tmp-")]
  # The progress bar counts configurations and starts at those already done.
  counts = [tuple(map(int, m)) for m in re.findall(r"\| *(\d+)/(\d+) \[", err)]
  assert counts[0] == (CHUNK * len(done), N) and counts[-1] == (N, N), counts

  ref_info, ref = reference()
  got = np.load(tmp_path / "resumed-train.npz")
  for name in ("curve", "w"):
    np.testing.assert_array_equal(got[name], ref["train"][name])  # bitwise


def _latest_carry(d, c):
  p = d / f"carry-{c:06d}"
  steps = [int(x) for x in os.listdir(p) if x.isdigit()] if p.exists() else []
  return max(steps, default=0)


def test_sigkill_mid_segment_resumes_from_the_saved_carry(tmp_path, reference):
  d = tmp_path / "step"
  n_chunks, n_seg = N // STEP_KW["chunk_size"], 3  # 10 steps in segments of 4, 4, 2
  victim = _child("step", tmp_path, tmp_path / "never", nap="0.01")
  _kill_when(victim, lambda: any(_latest_carry(d, c) >= 1 for c in range(n_chunks)))
  done = {int(f[6:12]) for f in _chunk_files(d)}
  assert len(done) < n_chunks
  restored = {c: _latest_carry(d, c) for c in range(n_chunks) if c not in done}
  assert any(restored.values()), "killed before any carry was saved"

  info, _ = _finish(_child("step", tmp_path, tmp_path / "resumed"))
  # Only the segments after each chunk's last saved carry ran again.
  assert info["segments_run"] == sum(n_seg - k for k in restored.values())
  assert info["chunks_run"] == n_chunks - len(done)
  assert not [f for f in os.listdir(d) if f.startswith("carry-")]  # removed once stored
  ref_info, ref = reference()
  assert ref_info["segments_run"] == n_chunks * n_seg
  got = np.load(tmp_path / "resumed-step.npz")
  for name in ("curve", "w"):
    np.testing.assert_array_equal(got[name], ref["step"][name])  # bitwise


def quick(hp, key):
  return {"x": hp["lr"] * jax.random.normal(key, (3,)), "n": jnp.sum(hp["lr"])}


def test_resume_loads_finished_chunks_and_progress_starts_at_done(tmp_path, capsys):
  grid = {"lr": [1.0, 2.0, 3.0, 4.0, 5.0]}
  first = wx.sweep(quick, grid, seeds=2, chunk_size=4, checkpoint_dir=tmp_path, progress=True)
  assert _chunk_files(tmp_path) == ["chunk-000000.npz", "chunk-000001.npz", "chunk-000002.npz"]
  assert re.findall(r"(\d+)/10 \[", capsys.readouterr().err)[0] == "0"
  os.remove(tmp_path / "chunk-000001.npz")  # as if the run had died during chunk 1
  (tmp_path / ".tmp-chunk-000001.npz-999").write_bytes(b"half a chunk")  # died mid-write
  before = sm._CHUNKS_RUN
  again = wx.sweep(quick, grid, seeds=2, chunk_size=4, checkpoint_dir=tmp_path, progress=True)
  assert sm._CHUNKS_RUN - before == 1
  counts = re.findall(r"(\d+)/10 \[", capsys.readouterr().err)
  assert counts[0] == "6" and counts[-1] == "10"  # 8 - 2: the last chunk holds 2 configs
  assert not list(tmp_path.glob(".tmp-*"))
  for name in ("x", "n"):
    np.testing.assert_array_equal(again.metrics[name], first.metrics[name])
  # Independent check of the layout: config i is lr_{i // 2} with seed i % 2.
  lr = np.repeat(grid["lr"], 2)
  np.testing.assert_allclose(again.metrics["n"], lr)
  x0 = jax.random.normal(jax.random.key(1), (3,))
  np.testing.assert_allclose(again.metrics["x"][7], 4.0 * np.asarray(x0), rtol=1e-6)


def _make_quick():
  def quick(hp, key):  # the same function as `quick`, a new object: nothing cached
    return {"x": hp["lr"] * jax.random.normal(key, (3,)), "n": jnp.sum(hp["lr"])}

  return quick


def test_fingerprint_is_the_same_whether_or_not_the_program_was_cached(tmp_path):
  grid = {"lr": [1.0, 2.0, 3.0]}
  wx.sweep(_make_quick(), grid, checkpoint_dir=tmp_path / "a")  # hashed when compiled
  cached = _make_quick()
  wx.sweep(cached, grid)  # compiled without a fingerprint
  before = sm.compile_count()
  wx.sweep(cached, grid, checkpoint_dir=tmp_path / "b")  # hashed from a new lowering
  assert sm.compile_count() == before  # lowered again, not compiled again
  read = lambda d: json.loads((tmp_path / d / "manifest.json").read_text())
  assert read("a") == read("b")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"grid": {"lr": [1.0, 2.0, 3.5]}}, r"grid axis 'lr': stored \[1\., 2\., 3\.\]"),
        ({"grid": {"lr": [1.0, 2.0, 3.0], "b": [0]}}, r"grid axes: stored \['lr'\]"),
        ({"seeds": [0, 5]}, r"seeds: stored \[0, 1\]"),
        ({"chunk_size": 3}, "chunk size: stored 2, now 3"),
        ({"train": lambda hp, k: {"x": 2.0 * hp["lr"] * jax.random.normal(k, (3,)),
                                  "n": jnp.sum(hp["lr"])}}, "program: the lowered program"),
    ],
)
def test_a_different_sweep_is_refused_naming_what_differs(tmp_path, change, match):
  call = {"train": quick, "grid": {"lr": [1.0, 2.0, 3.0]}, "seeds": 2, "chunk_size": 2}
  wx.sweep(**call, checkpoint_dir=tmp_path)
  stored = sorted(os.listdir(tmp_path))
  with pytest.raises(ValueError, match=match) as e:
    wx.sweep(**{**call, **change}, checkpoint_dir=tmp_path)
  assert "refusing to mix" in str(e.value)
  assert sorted(os.listdir(tmp_path)) == stored  # nothing written


def test_results_without_a_manifest_are_refused(tmp_path):
  # Chunks left without manifest.json (deleted to "reset", a partial copy) used to be
  # loaded into whatever sweep came next, labelled with its grid.
  call = {"train": quick, "seeds": 1, "chunk_size": 2}
  wx.sweep(**call, grid={"lr": [1.0, 2.0, 3.0, 4.0]}, checkpoint_dir=tmp_path)
  (tmp_path / "manifest.json").unlink()
  with pytest.raises(ValueError, match=r"holds results \(chunk-000000.npz, chunk-000001.npz\) "
                     "but no manifest.json"):
    wx.sweep(**call, grid={"lr": [5.0, 6.0, 7.0, 8.0]}, checkpoint_dir=tmp_path)
  assert not (tmp_path / "manifest.json").exists()


def test_damaged_files_are_named_in_the_error(tmp_path):
  call = {"train": quick, "grid": {"lr": [1.0, 2.0, 3.0]}, "seeds": 1, "chunk_size": 2}
  wx.sweep(**call, checkpoint_dir=tmp_path)
  chunk = tmp_path / "chunk-000001.npz"
  chunk.write_bytes(chunk.read_bytes()[:40])
  with pytest.raises(ValueError, match=r"chunk-000001.npz is unreadable .*delete it"):
    wx.sweep(**call, checkpoint_dir=tmp_path)
  chunk.unlink()  # as the message says: that chunk alone is recomputed
  again = wx.sweep(**call, checkpoint_dir=tmp_path)
  np.testing.assert_array_equal(again.metrics["x"], wx.sweep(**call).metrics["x"])
  manifest = tmp_path / "manifest.json"
  manifest.write_text(manifest.read_text()[:50])
  with pytest.raises(ValueError, match=r"manifest.json is unreadable"):
    wx.sweep(**call, checkpoint_dir=tmp_path)


def stepwise():
  def init(hp, key):
    return {"w": jax.random.normal(key, (3,)), "key": jax.random.fold_in(key, 1),
            "t": jnp.zeros((), jnp.int32), "curve": jnp.zeros(10)}

  def step(c, hp):
    jax.debug.callback(_nap, c["t"])
    noise = 0.01 * jax.random.normal(jax.random.fold_in(c["key"], c["t"]), (3,))
    loss, g = jax.value_and_grad(lambda w: jnp.mean((jnp.tanh(X @ w) - Y) ** 2))(c["w"])
    return {"w": c["w"] - hp["lr"] * g + noise, "key": c["key"], "t": c["t"] + 1,
            "curve": c["curve"].at[c["t"]].set(loss)}

  return wx.Stepwise(init=init, step=step, num_steps=10,
                     finish=lambda c: {"curve": c["curve"], "w": c["w"]})


STEP_KW = {"seeds": 1, "chunk_size": 4, "segment_steps": 4}  # segments of 4, 4, 2 steps


def test_stepwise_resumes_from_the_saved_carry(tmp_path, monkeypatch):
  run, grid = stepwise(), {"lr": [0.1, 0.3, 0.5]}
  kw = {"seeds": 1, "chunk_size": 2, "segment_steps": 4}  # segments of 4, 4, 2 steps
  full = wx.sweep(run, grid, checkpoint_dir=tmp_path / "full", **kw)
  one = wx.sweep(run, grid, seeds=1)  # one program, no segments
  for name in ("curve", "w"):
    np.testing.assert_allclose(full.metrics[name], one.metrics[name], rtol=1e-6, atol=1e-7)
  assert not [f for f in os.listdir(tmp_path / "full") if f.startswith("carry-")]

  def crash(*args):  # dies after chunk 0's last segment, before its metrics are stored
    raise KeyboardInterrupt

  monkeypatch.setattr(ckpt, "save_chunk", crash)
  with pytest.raises(KeyboardInterrupt):
    wx.sweep(run, grid, checkpoint_dir=tmp_path / "crash", **kw)
  monkeypatch.undo()
  assert os.listdir(tmp_path / "crash" / "carry-000000") == ["2"]  # after segments 1 and 2
  before = sm._SEGMENTS_RUN
  resumed = wx.sweep(run, grid, checkpoint_dir=tmp_path / "crash", **kw)
  assert sm._SEGMENTS_RUN - before == 1 + 3  # chunk 0's last segment, then all of chunk 1's
  for name in ("curve", "w"):
    np.testing.assert_array_equal(resumed.metrics[name], full.metrics[name])  # bitwise


def test_segment_steps_needs_a_stepwise_train():
  with pytest.raises(TypeError, match="wx.Stepwise"):
    wx.sweep(quick, {"lr": [1.0]}, segment_steps=2)
  with pytest.raises(ValueError, match="segment_steps must be a positive int"):
    wx.sweep(stepwise(), {"lr": [1.0]}, segment_steps=0)
  with pytest.raises(ValueError, match="num_steps must be a positive int"):
    wx.Stepwise(init=lambda h, k: 0, step=lambda c, h: c, num_steps=0)
