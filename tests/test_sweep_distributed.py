"""wx.sweep on JAX's distributed runtime: 2 real processes on this machine equal 1 process.

Each child process calls ``jax.distributed.initialize`` with a coordinator on
127.0.0.1 and has 2 CPU devices (4 devices in the global mesh; CPU collectives
are gloo, JAX's default on the CPU). Both run the same sweeps; each must return
the full result, equal to the single-process sweep computed here.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

import weightax as wx

CHILD = textwrap.dedent(
    """
    import json, sys
    import jax
    pid, port, out, ckdir = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=pid, initialization_timeout=120)
    import importlib
    import numpy as np
    sys.path.insert(0, sys.argv[5])
    from test_sweep_distributed import GRID, SEEDS, STEPWISE, train
    import weightax as wx
    sm = importlib.import_module("weightax.sweep")
    assert jax.process_count() == 2 and len(jax.devices()) == 4 and len(jax.local_devices()) == 2
    whole = wx.sweep(train, GRID, seeds=SEEDS)                    # 1 chunk of 8 (7 + 1 padded)
    # The compiled per-device program (after SPMD partitioning) holds 8 / 4 = 2 of the
    # configurations: its curves are [2, 10]; none of them is the whole chunk's [8, 10].
    (prog, _), = [v for k, v in sm._COMPILED.items() if k[0] == "run" and k[1] is train]
    text = prog.as_text()
    share = {"rows_2": "f32[2,10]" in text, "rows_8": "f32[8,10]" in text}
    before = sm._CHUNKS_RUN
    chunked = wx.sweep(train, GRID, seeds=SEEDS, chunk_size=3, checkpoint_dir=ckdir)  # 4+4(1 pad)
    ran = sm._CHUNKS_RUN - before
    again = wx.sweep(train, GRID, seeds=SEEDS, chunk_size=3, checkpoint_dir=ckdir)    # resumes
    ran_again = sm._CHUNKS_RUN - before - ran
    # A Stepwise sweep whose carries are kept (as after a crash), then its chunks lost:
    # the rerun restores each chunk's sharded carry (orbax, every process its shards) and
    # runs only the last of the 3 segments.
    import os
    from jax.experimental import multihost_utils
    ck = importlib.import_module("weightax._checkpoint")
    remove_carry, ck.remove_carry = ck.remove_carry, lambda *a: None
    kw = dict(seeds=SEEDS, chunk_size=4, segment_steps=4, checkpoint_dir=ckdir + "-seg")
    seg = wx.sweep(STEPWISE, GRID, **kw)  # 2 chunks of 4, segments of 4, 4, 2 steps
    ck.remove_carry = remove_carry
    multihost_utils.sync_global_devices("seg done")
    if pid == 0:
      for c in (0, 1):
        os.remove(ck.chunk_path(ckdir + "-seg", c))
    multihost_utils.sync_global_devices("chunks removed")
    segs = sm._SEGMENTS_RUN
    seg_again = wx.sweep(STEPWISE, GRID, **kw)
    segs_again = sm._SEGMENTS_RUN - segs
    np.testing.assert_array_equal(seg_again.metrics, seg.metrics)
    np.savez(out, whole=whole.metrics["curve"], chunked=chunked.metrics["curve"],
             again=again.metrics["curve"], seg=seg.metrics, w=whole.metrics["w"])
    print(json.dumps({"pid": pid, "ran": ran, "ran_again": ran_again, "share": share,
                      "segs": segs, "segs_again": segs_again}), flush=True)
    """
)

GRID = {"lr": [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}  # 7 configurations: not divisible by 4
SEEDS = [4]
X = jnp.linspace(-1.0, 1.0, 24).reshape(8, 3)
Y = jnp.sin(X @ jnp.array([1.0, -2.0, 0.5]))


def train(hp, key):
  """Gradient descent on a tiny regression from a random start; curve of 10 losses."""
  w0 = jax.random.normal(key, (3,))

  def body(w, _):
    loss, g = jax.value_and_grad(lambda w: jnp.mean((jnp.tanh(X @ w) - Y) ** 2))(w)
    return w - hp["lr"] * g, loss

  w, curve = jax.lax.scan(body, w0, None, length=10)
  return {"curve": curve, "w": w}


def _step(c, hp):
  g = jax.grad(lambda w: jnp.mean((jnp.tanh(X @ w) - Y) ** 2))(c["w"])
  return {"w": c["w"] - hp["lr"] * g}


STEPWISE = wx.Stepwise(init=lambda hp, key: {"w": jax.random.normal(key, (3,))}, step=_step,
                       num_steps=10, finish=lambda c: c["w"])


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  here = os.path.dirname(__file__)
  procs = [
      subprocess.Popen(
          [sys.executable, "-c", CHILD, str(i), str(port), str(tmp_path / f"out{i}.npz"),
           str(tmp_path / "ck"), here],
          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)
  ]
  results = []
  for p in procs:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    results.append(json.loads(out.strip().splitlines()[-1]))
  # Each device's program computes only its 2 of the 8 (7 + 1 padded) configurations.
  assert [r["share"] for r in results] == [{"rows_2": True, "rows_8": False}] * 2
  # The checkpointed sweep ran its 2 chunks once; the rerun loaded them and ran none.
  assert [(r["ran"], r["ran_again"]) for r in results] == [(2, 0), (2, 0)]
  assert [(r["segs"], r["segs_again"]) for r in results] == [(6, 2), (6, 2)]
  assert sorted(os.listdir(tmp_path / "ck")) == ["chunk-000000.npz", "chunk-000001.npz",
                                                 "manifest.json"]
  ref = wx.sweep(train, GRID, seeds=SEEDS)  # this process: one device, one program
  ref_seg = jax.vmap(STEPWISE)({"lr": jnp.asarray(GRID["lr"], jnp.float32)},
                               jax.vmap(jax.random.key)(jnp.full(7, SEEDS[0], jnp.uint32)))
  for i in range(2):
    got = np.load(tmp_path / f"out{i}.npz")
    for name in ("whole", "chunked", "again"):
      assert got[name].shape == (7, 10)
      np.testing.assert_allclose(got[name], ref.metrics["curve"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got["again"], got["chunked"])  # loaded, bitwise
    np.testing.assert_allclose(got["w"], ref.metrics["w"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got["seg"], ref_seg, rtol=1e-6, atol=1e-7)
