"""The PyTorch peers of ``benchmarks/bench_peers.py`` compute what weightax computes.

The benchmark compares weightax with PyTorch code transcribed from torchvision,
mmdetection and LibMTL, and with PyTorch versions of the studies' training runs;
its ratios mean something only if both sides do the same work. These tests check
that on small inputs. PyTorch is an optional extra (``pip install -e ".[bench]"``):
without it every test here is skipped.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bp():
  spec = importlib.util.spec_from_file_location("bench_peers",
                                                ROOT / "benchmarks" / "bench_peers.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_torchvision_focal_transcription_matches_paper_and_weightax(bp):
  from weightax.losses import sigmoid_focal_loss
  # Closed form at p = σ(0) = 1/2, y = 1: α (1 − p)^γ log 2 = 0.25 · 0.25 · log 2.
  v = bp.tv_sigmoid_focal_loss(torch.zeros(1, dtype=torch.float64),
                               torch.ones(1, dtype=torch.float64))
  assert float(v) == pytest.approx(0.25 * 0.25 * math.log(2), rel=1e-12)
  r = np.random.default_rng(1)
  z, y = r.normal(size=(64, 7)) * 4, (r.uniform(size=(64, 7)) < 0.2).astype(np.float64)
  with bp._enable_x64():
    zj, yj = jnp.asarray(z), jnp.asarray(y)
    ref, gref = map(np.asarray, jax.jit(lambda v: (
        sigmoid_focal_loss(v, yj, alpha=0.25, gamma=2.0),
        jax.grad(lambda u: sigmoid_focal_loss(u, yj).sum())(v)))(zj))
  assert ref.dtype == np.float64
  zt = torch.tensor(z, requires_grad=True)
  out = bp.tv_sigmoid_focal_loss(zt, torch.tensor(y))
  (g,) = torch.autograd.grad(out.sum(), zt)
  np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-10, atol=1e-14)
  np.testing.assert_allclose(g.numpy(), gref, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("momentum,bins", [(0.0, 10), (0.75, 30)])
def test_mmdetection_ghmc_transcription_matches_weightax(bp, momentum, bins):
  # Three calls with the running bin counts threaded on both sides. weightax keeps the
  # counts and weights in float32, so float64 losses agree to float32 rounding.
  worst = bp.losses_agreement(seed=3, shape=(128, 20), momentum=momentum, bins=bins, calls=3)
  for name in ("ghmc_loss", "ghmc_grad", "ghmc_acc_sum"):
    assert worst[name] < 1e-6, (name, worst)
  assert worst["focal_value"] < 1e-12 and worst["focal_grad"] < 1e-12, worst


def test_mmdetection_ghmc_transcription_one_bin_is_mean_bce(bp):
  # With one bin every valid element has weight tot / (count · 1) = 1: plain mean BCE
  # (to float32 precision: mmdetection casts the targets to float32).
  z = torch.tensor([0.0, 2.0, -1.0], dtype=torch.float64)
  y = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
  loss = bp.MMDetGHMC(bins=1).double()(z, y, torch.ones_like(y))
  bce = [math.log(2), math.log1p(math.exp(2.0)), math.log1p(math.exp(-1.0))]
  assert float(loss) == pytest.approx(sum(bce) / 3, rel=1e-7)


def test_libmtl_mgda_solver_matches_weightax_mgda(bp):
  import weightax as wx
  solve = jax.jit(lambda gram: wx.weightings.mgda(gram, reg_eps=0.0))
  r = np.random.default_rng(0)
  for k in (2, 3, 5):
    for _ in range(5):
      g = r.normal(size=(k, 40)) + r.normal(size=(1, 40))  # correlated task gradients
      w = bp.LibMTLMGDA([torch.zeros(1)], task_num=k)
      sol = w._find_min_norm_element(torch.tensor(g, dtype=torch.float32)).numpy()
      ref = np.asarray(solve(jnp.asarray(g @ g.T, jnp.float32)))
      # Frank-Wolfe stops at a step of 1e-5 (and clips K = 2 to [0.001, 0.999]): compare
      # the min-norm objective, which is flat at the optimum, and the weights loosely.
      obj = lambda lam, g=g: float(np.sum((lam @ g) ** 2))
      assert sol.sum() == pytest.approx(1.0, abs=1e-5) and sol.min() >= 0
      assert obj(sol) <= obj(ref) * (1 + 1e-3) + 1e-6, (k, sol, ref)
      np.testing.assert_allclose(sol, ref, atol=5e-3 if k > 2 else 1e-3)


def test_libmtl_backward_gives_weighted_shared_and_summed_head_gradients(bp):
  # Shared parameter s, head parameters h_k; L_k = (h_k s - t_k)^2.
  s = torch.tensor([1.0], requires_grad=True)
  h = torch.tensor([2.0, -1.0, 0.5], requires_grad=True)
  t = torch.tensor([1.0, 3.0, 0.0])
  losses = (h * s - t) ** 2
  w = bp.LibMTLMGDA([s], task_num=3)
  sol = w.backward(losses)
  g_shared = (2 * (h * s - t) * h).detach().numpy()  # per-task gradients of s
  assert float(s.grad) == pytest.approx(float(np.dot(sol, g_shared)), rel=1e-5)
  np.testing.assert_allclose(h.grad.numpy(), (2 * (h * s - t) * s).detach().numpy(), rtol=1e-6)


def test_pytorch_cnn_equals_weightax_cnn(bp):
  from weightax.nn_cnn import init_hard_sharing_cnn
  params, apply = init_hard_sharing_cnn(jax.random.key(4), size=12, out_sizes=(10, 10, 1))
  x = np.random.default_rng(0).uniform(size=(5, 12, 12)).astype(np.float32)
  model = bp.TorchHardSharingCNN(bp.flat_params(params), 12)
  with torch.no_grad():
    outs = model(torch.from_numpy(x))
  for o_t, o_j in zip(outs, jax.jit(apply)(params, jnp.asarray(x)), strict=True):
    np.testing.assert_allclose(o_t.numpy(), np.asarray(o_j), rtol=1e-4, atol=1e-5)


def test_pytorch_loss_scale_run_reproduces_the_study_run(bp):
  """Same init, same batches, same Adam: the curves of a short run agree to float32 noise."""
  import loss_scale as study  # bench_peers put experiments/ on sys.path

  from weightax.datasets import load_digits
  from weightax.nn import init_mlp
  largs = study.parse_args(["--optimizers", "adam", "--steps", "40", "--eval-every", "10"])
  tr, _ = load_digits(seed=0)
  x, y = jnp.asarray(tr.x), jnp.asarray(tr.y)
  train = jax.jit(study.make_train(largs, x, y))
  w, seed = 0.3, 2
  ref = train({"opt": jnp.int32(0), "w": jnp.float32(w)}, jax.random.key(seed))
  k_init, k_fit = jax.random.split(jax.random.key(seed))
  params, _ = init_mlp((64, largs.hidden, 10), k_init)
  idx = bp.batch_indices(k_fit, largs.steps, x.shape[0], largs.batch_size, parts=2)
  curve = bp.torch_loss_scale_run(
      float(np.float32(w)), bp.flat_params(params), torch.as_tensor(idx),
      torch.as_tensor(np.array(x)), torch.as_tensor(np.array(y), dtype=torch.long),
      float(largs.lr_adam), largs.eval_every).numpy()
  np.testing.assert_allclose(curve[:, 0], np.asarray(ref["curve"]), rtol=1e-4)
  np.testing.assert_allclose(curve[:, 1], np.asarray(ref["param_norm"]), rtol=1e-5)
  # It trained, so the agreement is not that of two untouched initialisations; a run on
  # other batches ends elsewhere (checked below), so the batches are the study's.
  assert curve[-1, 0] < curve[0, 0] - 0.1
  other = bp.torch_loss_scale_run(
      float(np.float32(w)), bp.flat_params(params), torch.as_tensor(np.roll(idx, 1, axis=0)),
      torch.as_tensor(np.array(x)), torch.as_tensor(np.array(y), dtype=torch.long),
      float(largs.lr_adam), largs.eval_every).numpy()
  assert np.max(np.abs(other[1:, 0] - curve[1:, 0])) > 1e-3


@pytest.mark.slow
def test_gpu_check_script_runs_tiny_on_cpu(tmp_path):
  """``benchmarks/gpu_check.sh`` end to end with TINY=1 and PyTorch on the CPU (minutes)."""
  env = {**os.environ, "OUT": str(tmp_path), "TINY": "1", "TORCH_DEVICE": "cpu",
         "PY": sys.executable, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
         "SWEEP_TIMEOUT": "600", "LS_TIMEOUT": "600", "MD_TIMEOUT": "900", "LOSS_TIMEOUT": "600"}
  proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=2400)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  for name in ("env.txt", "bench_sweep.md", "peers.md", "peers_loss_scale.json",
               "peers_multidigits.json", "peers_losses.json", "log.txt"):
    assert (tmp_path / name).stat().st_size > 0, name
  text = (tmp_path / "peers.md").read_text()
  for heading in ("Loss-scale study", "MultiDigits, MGDA", "Focal and GHM-C"):
    assert heading in text
