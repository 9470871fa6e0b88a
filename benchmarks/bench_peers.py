#!/usr/bin/env python
"""weightax against its PyTorch peers, measured side by side in one process.

Three parts (``--parts``, default all three), each timed with the variants
interleaved repetition by repetition, reported as medians and ratios of medians,
with the load average (``os.getloadavg``, as ``uptime`` prints it) around each:

``loss_scale``
  The loss-scale study's sweep (``experiments/loss_scale.py``'s ``make_train``,
  ``wx.sweep`` with the study's chunking) on a subset of its grid: Adam,
  ``--ls-num-w`` loss weights log-spaced over the study's [1e-6, 10] ×
  ``--ls-seeds`` seeds × the study's 3000 steps, against the same runs as an
  ordinary PyTorch loop (``nn.Sequential`` MLP 64-32-10, ``torch.optim.Adam``,
  ``zero_grad/backward/step``, the full-data cross-entropy and parameter norm
  every 10 steps), one run after another. The PyTorch runs start from the same
  initial weights and draw the same minibatches (the indices are precomputed from
  the sweep's keys outside the timed region, which favours PyTorch slightly), so
  their curves are compared with the sweep's.

``multidigits``
  The MultiDigits benchmark (``experiments/multidigits.py``: the shared CNN
  trunk, three heads, Adam, batch 32, evaluation every 100 steps) for MGDA ×
  ``--md-seeds`` seeds: weightax's sweep (``wx.mtl.fit`` with ``wx.mgda``)
  against the same training in PyTorch with LibMTL's MGDA weighting
  (``mgda_gn='none'``; its weighting code transcribed below, since LibMTL 1.1.5
  does not import beside a current torchvision: see ``LibMTLMGDA``). Same
  network shapes and initial weights, same data and batches, same steps.

``losses``
  Forward + backward of ``weightax.losses.sigmoid_focal_loss`` and ``ghm_c``
  (jitted) against torchvision's ``sigmoid_focal_loss`` and mmdetection's GHM-C
  loop (eager PyTorch, transcribed below), on ``[batch, 80]`` logits for
  several batch sizes; the values and gradients are first checked to agree.

PyTorch gets as many intra-op threads as XLA's CPU client uses (one per CPU this
process may run on), set with ``torch.set_num_threads``. Compilation is
excluded from the timings (every variant runs once before the timed
repetitions); the multidigits part also reports the first call of each side.

Usage:
  python benchmarks/bench_peers.py [--parts loss_scale,multidigits,losses] [--reps 3]
      [--torch-device cpu|cuda] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# libgomp's default (active) waiting makes PyTorch's OpenMP threads spin for their
# barriers; on a shared, oversubscribed CPU that made a 2-thread PyTorch training step
# 30x slower than a 1-thread one (measured at load average 20 on 2 cores). Passive
# waiting removes that artefact and costs nothing measurable on an idle machine; set
# OMP_WAIT_POLICY yourself to override. It must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
sys.path.insert(0, str(ROOT))

import weightax as wx  # noqa: E402
from weightax import losses as L  # noqa: E402

PARTS = ("loss_scale", "multidigits", "losses")


# --------------------------------------------------------------------------------------
# Transcriptions of the peers' code (PyTorch).
# --------------------------------------------------------------------------------------


def tv_sigmoid_focal_loss(inputs: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                          gamma: float = 2.0, reduction: str = "none") -> torch.Tensor:
  """torchvision's ``torchvision.ops.sigmoid_focal_loss``, transcribed operation by operation.

  Source: https://github.com/pytorch/vision/blob/main/torchvision/ops/focal_loss.py
  (BSD-3-Clause; itself from fvcore). Transcribed because torchvision does not
  import beside the CPU torch of this project's ``bench`` extra.
  """
  p = torch.sigmoid(inputs)
  ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
  p_t = p * targets + (1 - p) * (1 - targets)
  loss = ce * (1 - p_t) ** gamma
  if alpha >= 0:
    loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
  if reduction == "mean":
    return loss.mean()
  if reduction == "sum":
    return loss.sum()
  return loss


class MMDetGHMC(nn.Module):
  """mmdetection's ``GHMC`` (GHM-C loss, ``use_sigmoid=True``), transcribed.

  Source: https://github.com/open-mmlab/mmdetection/blob/main/mmdet/models/losses/ghm_loss.py
  (Apache-2.0). The Python loop over bins with one ``.item()`` per bin is
  mmdetection's; binary targets with the logits' shape only (no one-hot expansion).
  """

  def __init__(self, bins: int = 10, momentum: float = 0.0, loss_weight: float = 1.0):
    super().__init__()
    self.bins, self.momentum, self.loss_weight = bins, momentum, loss_weight
    edges = torch.arange(bins + 1).float() / bins
    edges[-1] += 1e-6
    self.register_buffer("edges", edges)
    if momentum > 0:
      self.register_buffer("acc_sum", torch.zeros(bins))

  def forward(self, pred: torch.Tensor, target: torch.Tensor,
              label_weight: torch.Tensor) -> torch.Tensor:
    target, label_weight = target.float(), label_weight.float()
    edges, mmt = self.edges, self.momentum
    weights = torch.zeros_like(pred)
    g = torch.abs(pred.sigmoid().detach() - target)  # gradient norm of the BCE
    valid = label_weight > 0
    tot = max(valid.float().sum().item(), 1.0)
    n = 0  # non-empty bins
    for i in range(self.bins):
      inds = (g >= edges[i]) & (g < edges[i + 1]) & valid
      num_in_bin = inds.sum().item()
      if num_in_bin > 0:
        if mmt > 0:
          self.acc_sum[i] = mmt * self.acc_sum[i] + (1 - mmt) * num_in_bin
          weights[inds] = tot / self.acc_sum[i]
        else:
          weights[inds] = tot / num_in_bin
        n += 1
    if n > 0:
      weights = weights / n
    loss = F.binary_cross_entropy_with_logits(pred, target, weights, reduction="sum") / tot
    return loss * self.loss_weight


class LibMTLMGDA:
  """LibMTL 1.1.5's MGDA weighting (``LibMTL/weighting/MGDA.py`` + ``abstract_weighting.py``).

  Source: https://github.com/median-research-group/LibMTL (MIT), the code of the
  ``LibMTL==1.1.5`` wheel on PyPI: ``_compute_grad`` in ``'backward'`` mode (one
  backward pass per task, the shared gradients copied into a ``[K, P]`` matrix
  and zeroed, the task-specific ones accumulating), the gradient normalisation
  ``mgda_gn``, the Frank-Wolfe min-norm solver of Sener & Koltun's code
  (``_find_min_norm_element``) and ``_reset_grad``. Transcribed rather than
  imported because ``import LibMTL`` imports ``torchvision.models.utils``, which
  torchvision removed in 0.12 (and pip resolves ``LibMTL``'s ``torchvision``
  requirement by replacing the CPU torch with a CUDA build). One deviation:
  LibMTL's solver returns ``None`` (and the step then fails) when its 250
  iterations end without meeting the stopping criterion; here it returns the last
  iterate.
  """

  MAX_ITER, STOP_CRIT = 250, 1e-5

  def __init__(self, shared: list[torch.Tensor], task_num: int, mgda_gn: str = "none"):
    self.shared, self.task_num, self.mgda_gn = shared, task_num, mgda_gn
    self.grad_index = [p.numel() for p in shared]
    self.grad_dim = sum(self.grad_index)
    self.device = shared[0].device

  # -- abstract_weighting.py --
  def _grad2vec(self) -> torch.Tensor:
    grad = torch.zeros(self.grad_dim)
    for count, param in enumerate(self.shared):
      if param.grad is not None:
        beg = 0 if count == 0 else sum(self.grad_index[:count])
        end = sum(self.grad_index[:(count + 1)])
        grad[beg:end] = param.grad.data.view(-1)
    return grad

  def _compute_grad(self, losses: torch.Tensor) -> torch.Tensor:
    grads = torch.zeros(self.task_num, self.grad_dim).to(self.device)
    for tn in range(self.task_num):
      losses[tn].backward(retain_graph=(tn + 1) != self.task_num)
      grads[tn] = self._grad2vec()
      for p in self.shared:  # zero_grad_share_params
        if p.grad is not None:
          p.grad.zero_()
    return grads

  def _reset_grad(self, new_grads: torch.Tensor) -> None:
    for count, param in enumerate(self.shared):
      beg = 0 if count == 0 else sum(self.grad_index[:count])
      end = sum(self.grad_index[:(count + 1)])
      param.grad.data = new_grads[beg:end].contiguous().view(param.data.size()).data.clone()

  # -- MGDA.py --
  @staticmethod
  def _min_norm_element_from2(v1v1, v1v2, v2v2):
    if v1v2 >= v1v1:
      return 0.999, v1v1
    if v1v2 >= v2v2:
      return 0.001, v2v2
    gamma = -1.0 * ((v1v2 - v2v2) / (v1v1 + v2v2 - 2 * v1v2))
    return gamma, v2v2 + gamma * (v1v2 - v2v2)

  def _min_norm_2d(self, grad_mat):
    dmin, sol = 1e8, None
    for i in range(grad_mat.size()[0]):
      for j in range(i + 1, grad_mat.size()[0]):
        c, d = self._min_norm_element_from2(grad_mat[i, i], grad_mat[i, j], grad_mat[j, j])
        if d < dmin:
          dmin = d
          sol = [(i, j), c, d]
    return sol

  @staticmethod
  def _projection2simplex(y):
    m = len(y)
    sorted_y = torch.sort(y, descending=True)[0]
    tmpsum = 0.0
    tmax_f = (torch.sum(y) - 1.0) / m
    for i in range(m - 1):
      tmpsum += sorted_y[i]
      tmax = (tmpsum - 1) / (i + 1.0)
      if tmax > sorted_y[i + 1]:
        tmax_f = tmax
        break
    return torch.max(y - tmax_f, torch.zeros(m).to(y.device))

  def _next_point(self, cur_val, grad, n):
    proj_grad = grad - (torch.sum(grad) / n)
    tm1 = -1.0 * cur_val[proj_grad < 0] / proj_grad[proj_grad < 0]
    tm2 = (1.0 - cur_val[proj_grad > 0]) / (proj_grad[proj_grad > 0])
    t = torch.ones(1).to(grad.device)
    if (tm1 > 1e-7).sum() > 0:
      t = torch.min(tm1[tm1 > 1e-7])
    if (tm2 > 1e-7).sum() > 0:
      t = torch.min(t, torch.min(tm2[tm2 > 1e-7]))
    return self._projection2simplex(proj_grad * t + cur_val)

  def _find_min_norm_element(self, grads):
    grad_mat = grads.mm(grads.t())
    init_sol = self._min_norm_2d(grad_mat)
    n = grads.size()[0]
    sol_vec = torch.zeros(n).to(grads.device)
    sol_vec[init_sol[0][0]] = init_sol[1]
    sol_vec[init_sol[0][1]] = 1 - init_sol[1]
    if n < 3:
      return sol_vec
    for _ in range(self.MAX_ITER):
      grad_dir = -1.0 * torch.matmul(grad_mat, sol_vec)
      new_point = self._next_point(sol_vec, grad_dir, n)
      v1v1 = torch.sum(sol_vec.unsqueeze(1).repeat(1, n) * sol_vec.unsqueeze(0).repeat(n, 1)
                       * grad_mat)
      v1v2 = torch.sum(sol_vec.unsqueeze(1).repeat(1, n) * new_point.unsqueeze(0).repeat(n, 1)
                       * grad_mat)
      v2v2 = torch.sum(new_point.unsqueeze(1).repeat(1, n) * new_point.unsqueeze(0).repeat(n, 1)
                       * grad_mat)
      nc, _ = self._min_norm_element_from2(v1v1, v1v2, v2v2)
      new_sol_vec = nc * sol_vec + (1 - nc) * new_point
      if torch.sum(torch.abs(new_sol_vec - sol_vec)) < self.STOP_CRIT:
        return sol_vec
      sol_vec = new_sol_vec
    return sol_vec  # LibMTL falls off the loop here and returns None

  def _gradient_normalizers(self, grads, loss_data):
    if self.mgda_gn == "l2":
      gn = grads.pow(2).sum(-1).sqrt()
    elif self.mgda_gn == "loss":
      gn = loss_data
    elif self.mgda_gn == "loss+":
      gn = loss_data * grads.pow(2).sum(-1).sqrt()
    elif self.mgda_gn == "none":
      gn = torch.ones_like(loss_data).to(self.device)
    else:
      raise ValueError(f"No support normalization type {self.mgda_gn} for MGDA")
    return grads / gn.unsqueeze(1).repeat(1, grads.size()[1])

  def backward(self, losses: torch.Tensor) -> np.ndarray:
    grads = self._compute_grad(losses)
    loss_data = torch.tensor([loss.item() for loss in losses]).to(self.device)
    grads = self._gradient_normalizers(grads, loss_data)
    sol = self._find_min_norm_element(grads)
    self._reset_grad(torch.einsum("i, i... -> ...", sol, grads))
    return sol.detach().cpu().numpy()


# --------------------------------------------------------------------------------------
# Shared helpers.
# --------------------------------------------------------------------------------------


def xla_cpu_threads() -> int:
  """The size of XLA's CPU intra-op thread pool: one thread per CPU this process may use."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def _enable_x64():
  """``jax.enable_x64(True)`` (a context manager), or its older ``jax.experimental`` name."""
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64
  return enable_x64()


def load_avg() -> str:
  try:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())
  except OSError:
    return "n/a"


def flat_params(params: Any) -> dict[str, np.ndarray]:
  """``{"['layers'][0]['kernel']": array}`` from an nnx parameter state."""
  return {jax.tree_util.keystr(k).replace(".value", ""): np.array(v)
          for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def batch_indices(key_fit: jax.Array, steps: int, n: int, batch: int, parts: int) -> np.ndarray:
  """``[steps, batch]``: the examples ``wx.fit`` (parts=2) / ``wx.mtl.fit`` (parts=3) draw.

  Both split the run's key into one key per step and each step's key into
  ``parts``, the first of which draws the batch (``wx.sample_batch``).
  """
  keys = jax.random.split(key_fit, steps)
  kb = jax.vmap(lambda k: jax.random.split(k, parts)[0])(keys)
  return np.array(jax.vmap(lambda k: jax.random.randint(k, (batch,), 0, n))(kb))  # writable


def sync(device: torch.device) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def interleaved(variants: dict[str, Callable[[], Any]],
                reps: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
  """Wall and CPU times of ``reps`` round-robin repetitions (after one untimed call each).

  Every variant waits for its own work to finish before returning. CPU time
  (``time.process_time``: every thread of this process) hardly grows when other
  processes share the cores, unlike wall time, so it is the steadier measure on a
  loaded machine (it does count threads that spin while they wait).
  """
  for fn in variants.values():
    fn()
  times: dict[str, list[float]] = {k: [] for k in variants}
  cpu: dict[str, list[float]] = {k: [] for k in variants}
  for _ in range(reps):
    for name, fn in variants.items():
      t0, c0 = time.perf_counter(), time.process_time()
      fn()
      times[name].append(time.perf_counter() - t0)
      cpu[name].append(time.process_time() - c0)
  return times, cpu


def fmt_s(t: float) -> str:
  return f"{t:.3f}" if t < 10 else f"{t:.1f}"


# --------------------------------------------------------------------------------------
# Part 1: the loss-scale study's sweep vs a PyTorch loop.
# --------------------------------------------------------------------------------------


def torch_mlp(init: dict[str, np.ndarray], device: torch.device) -> nn.Module:
  """``nn.Sequential`` MLP with the weights of ``weightax.nn.init_mlp``'s params."""
  n_layers = sum(1 for k in init if k.endswith("['kernel']"))
  mods: list[nn.Module] = []
  for i in range(n_layers):
    k = init[f"['layers'][{i}]['kernel']"]
    lin = nn.Linear(*k.shape)
    with torch.no_grad():
      lin.weight.copy_(torch.from_numpy(k.T.copy()))  # flax kernels are [in, out]
      lin.bias.copy_(torch.from_numpy(init[f"['layers'][{i}]['bias']"]))
    mods += [lin, nn.ReLU()]
  return nn.Sequential(*mods[:-1]).to(device)


def torch_loss_scale_run(w: float, init: dict[str, np.ndarray], idx: torch.Tensor,
                         x: torch.Tensor, y: torch.Tensor, lr: float,
                         eval_every: int) -> torch.Tensor:
  """One run of the study as an ordinary PyTorch loop: ``[steps/E + 1, 2]`` (CE, |θ|)."""
  model = torch_mlp(init, x.device)
  opt = torch.optim.Adam(model.parameters(), lr=lr)

  def evaluate() -> torch.Tensor:
    with torch.no_grad():
      norm = torch.sqrt(sum(torch.sum(p ** 2) for p in model.parameters()))
      return torch.stack([F.cross_entropy(model(x), y), norm])

  curve = [evaluate()]
  for t in range(idx.shape[0]):
    b = idx[t]
    loss = w * F.cross_entropy(model(x[b]), y[b])
    opt.zero_grad()
    loss.backward()
    opt.step()
    if (t + 1) % eval_every == 0:
      curve.append(evaluate())
  return torch.stack(curve)


def part_loss_scale(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
  import loss_scale as study

  from weightax.datasets import load_digits
  from weightax.nn import init_mlp

  largs = study.parse_args(["--optimizers", "adam", "--num-w", str(args.ls_num_w),
                            "--seeds", str(args.ls_seeds), "--steps", str(args.ls_steps)])
  tr, _ = load_digits(seed=0)
  x, y = jnp.asarray(tr.x), jnp.asarray(tr.y)
  train = study.make_train(largs, x, y)
  ws = np.logspace(np.log10(largs.w_min), np.log10(largs.w_max), largs.num_w)
  grid = {"opt": [0], "w": ws.tolist()}
  n_runs = len(ws) * largs.seeds
  chunk = args.ls_chunk_size or -(-n_runs // 4)  # the study's default: a quarter of the runs
  lr = float(largs.lr_adam)

  # The sweep's configurations, in its order, and what each needs in PyTorch.
  coords = wx.sweep(lambda hp, k: {"w": hp["w"]}, grid, seeds=largs.seeds, progress=False).coords
  per_seed = {}
  for s in range(largs.seeds):
    k_init, k_fit = jax.random.split(jax.random.key(s))
    params, _ = init_mlp((x.shape[1], largs.hidden, 10), k_init)
    idx = batch_indices(k_fit, largs.steps, x.shape[0], largs.batch_size, parts=2)
    per_seed[s] = (flat_params(params), torch.as_tensor(idx, dtype=torch.long, device=device))
  xt = torch.as_tensor(np.array(x), device=device)
  yt = torch.as_tensor(np.array(y), dtype=torch.long, device=device)
  configs = [(float(np.float32(w)), int(s)) for w, s in zip(coords["w"], coords["seed"],
                                                             strict=True)]

  def run_wx() -> np.ndarray:
    res = wx.sweep(train, grid, seeds=largs.seeds, chunk_size=chunk, progress=False)
    return np.stack([np.asarray(res.metrics["curve"]), np.asarray(res.metrics["param_norm"])],
                    axis=-1)

  # PyTorch trains the runs one after another, so its runs/s is measured on the first
  # --ls-torch-runs configurations (each a full run) when the machine is too slow for all.
  n_torch = min(args.ls_torch_runs or n_runs, n_runs)
  # Spread over the grid: every seed, and loss weights from the smallest to the largest.
  pick = np.unique(np.linspace(0, n_runs - 1, n_torch).round().astype(int))
  n_torch = len(pick)

  def run_torch() -> np.ndarray:
    out = [torch_loss_scale_run(configs[i][0], *per_seed[configs[i][1]], xt, yt, lr,
                                largs.eval_every) for i in pick]
    return torch.stack(out).cpu().numpy()

  load0 = load_avg()
  t0 = time.perf_counter()
  curves_wx, curves_t = run_wx(), run_torch()
  first = time.perf_counter() - t0
  times, cpu = interleaved({"weightax: wx.sweep": run_wx, "PyTorch loop": run_torch},
                           args.reps)
  load1 = load_avg()
  med = {k: statistics.median(v) for k, v in times.items()}
  med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
  curves_wx = curves_wx[pick]
  ce_wx, ce_t = curves_wx[..., 0], curves_t[..., 0]
  agree = {
      "max_abs_diff_ce_first_10_evals": float(np.max(np.abs(ce_wx[:, :10] - ce_t[:, :10]))),
      "max_abs_diff_ce_final": float(np.max(np.abs(ce_wx[:, -1] - ce_t[:, -1]))),
      "median_abs_diff_ce_final": float(np.median(np.abs(ce_wx[:, -1] - ce_t[:, -1]))),
      "max_rel_diff_param_norm_final": float(np.max(
          np.abs(curves_wx[:, -1, 1] - curves_t[:, -1, 1]) / curves_t[:, -1, 1])),
  }
  runs = {"weightax: wx.sweep": n_runs, "PyTorch loop": n_torch}
  return {"part": "loss_scale", "runs": n_runs, "torch_runs": n_torch,
          "steps": largs.steps, "chunk_size": chunk,
          "eval_every": largs.eval_every, "w": [float(w) for w in ws], "seeds": largs.seeds,
          "times_s": times, "median_s": med, "cpu_s": cpu, "median_cpu_s": med_cpu,
          "runs_per_s": {k: runs[k] / v for k, v in med.items()},
          "cpu_s_per_run": {k: v / runs[k] for k, v in med_cpu.items()},
          "speedup_cpu": (med_cpu["PyTorch loop"] / runs["PyTorch loop"])
          / (med_cpu["weightax: wx.sweep"] / runs["weightax: wx.sweep"]),
          "speedup": (runs["weightax: wx.sweep"] / med["weightax: wx.sweep"])
          / (runs["PyTorch loop"] / med["PyTorch loop"]),
          "first_pass_s": first, "agreement": agree, "load_before": load0, "load_after": load1}


# --------------------------------------------------------------------------------------
# Part 2: MultiDigits, MGDA × seeds, weightax vs PyTorch + LibMTL's MGDA.
# --------------------------------------------------------------------------------------


class TorchHardSharingCNN(nn.Module):
  """``weightax.nn_cnn``'s trunk and heads as ordinary ``nn.Conv2d``/``nn.Linear`` layers.

  conv3×3(c1, pad 1) → ReLU → max-pool 2 → conv3×3 stride 2 (c2, pad 1) → ReLU →
  dense → ReLU, then one linear head per task; built from the JAX parameters so
  that both sides start from the same weights.
  """

  def __init__(self, init: dict[str, np.ndarray], size: int):
    super().__init__()
    t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32, order="C"))
    k1, k2 = init["['trunk']['conv1']['kernel']"], init["['trunk']['conv2']['kernel']"]
    c1, c2 = k1.shape[1], k2.shape[1]
    kd = init["['trunk']['dense']['kernel']"]
    side = -(-(size // 2) // 2)
    feats = kd.shape[1]
    self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
    self.conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
    self.dense = nn.Linear(side * side * c2, feats)
    n_heads = sum(1 for k in init if k.startswith("['heads']") and k.endswith("['kernel']"))
    self.heads = nn.ModuleList(
        nn.Linear(feats, init[f"['heads']['heads'][{i}]['kernel']"].shape[1])
        for i in range(n_heads))
    with torch.no_grad():
      # patches are ordered (row offset, column offset, channel): kernel [9c, out] is HWIO.
      self.conv1.weight.copy_(t(k1.reshape(3, 3, 1, c1).transpose(3, 2, 0, 1)))
      self.conv1.bias.copy_(t(init["['trunk']['conv1']['bias']"]))
      self.conv2.weight.copy_(t(k2.reshape(3, 3, c1, c2).transpose(3, 2, 0, 1)))
      self.conv2.bias.copy_(t(init["['trunk']['conv2']['bias']"]))
      # JAX flattens NHWC (h, w, c); PyTorch flattens NCHW (c, h, w).
      self.dense.weight.copy_(t(kd.reshape(side, side, c2, feats).transpose(3, 2, 0, 1)
                                .reshape(feats, -1)))
      self.dense.bias.copy_(t(init["['trunk']['dense']['bias']"]))
      for i, head in enumerate(self.heads):
        head.weight.copy_(t(init[f"['heads']['heads'][{i}]['kernel']"].T))
        head.bias.copy_(t(init[f"['heads']['heads'][{i}]['bias']"]))
    self.trunk = nn.ModuleList([self.conv1, self.conv2, self.dense])

  def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
    h = F.max_pool2d(F.relu(self.conv1(x[:, None])), 2)
    h = F.relu(self.conv2(h))
    z = F.relu(self.dense(h.flatten(1)))
    return [head(z) for head in self.heads]


def _md_losses(out: list[torch.Tensor], left, right, total) -> torch.Tensor:
  return torch.stack([F.cross_entropy(out[0], left), F.cross_entropy(out[1], right),
                      torch.mean(torch.abs(out[2][:, 0] - total))])


def _md_metrics(out: list[torch.Tensor], left, right, total) -> torch.Tensor:
  return torch.stack([(out[0].argmax(-1) == left).float().mean(),
                      (out[1].argmax(-1) == right).float().mean(),
                      torch.mean(torch.abs(out[2][:, 0] - total))])


def torch_multidigits_run(init: dict[str, np.ndarray], idx: torch.Tensor, data: dict[str, Any],
                          size: int, lr: float, eval_every: int) -> torch.Tensor:
  """One seed of MGDA on MultiDigits in PyTorch: ``[evals, 2 (val, test), 3]`` metrics."""
  device = idx.device
  model = TorchHardSharingCNN(init, size).to(device)
  opt = torch.optim.Adam(model.parameters(), lr=lr)
  weighting = LibMTLMGDA(list(model.trunk.parameters()), task_num=3, mgda_gn="none")
  xtr, ltr, rtr, str_ = data["train"]

  def evaluate() -> torch.Tensor:
    with torch.no_grad():
      return torch.stack([_md_metrics(model(s[0]), *s[1:]) for s in (data["val"], data["test"])])

  evals = [evaluate()]
  for t in range(idx.shape[0]):
    b = idx[t]
    losses = _md_losses(model(xtr[b]), ltr[b], rtr[b], str_[b])
    opt.zero_grad(set_to_none=False)  # LibMTL's Trainer
    weighting.backward(losses)
    opt.step()
    if (t + 1) % eval_every == 0:
      evals.append(evaluate())
  return torch.stack(evals)


def part_multidigits(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
  import multidigits as study

  argv = ["--methods", "mgda", "--seeds", str(args.md_seeds), "--steps", str(args.md_steps),
          "--eval-every", str(args.md_eval_every)]
  if args.md_quick:
    argv += ["--n-train", "600", "--n-val", "200", "--n-test", "200"]
  margs = study.parse_args(argv)
  problem = study.Problem(margs)
  train = study.make_train(problem, wx.aggregators.mgda, ())
  seeds = margs.seeds

  per_seed = {}
  for s in range(seeds):
    k_init, k_fit = jax.random.split(jax.random.key(s))
    params, _ = problem.init(k_init)
    idx = batch_indices(k_fit, margs.steps, problem.train[0].shape[0], margs.batch_size, parts=3)
    per_seed[s] = (flat_params(params), torch.as_tensor(idx, dtype=torch.long, device=device))
  to_t = lambda split: tuple(
      torch.as_tensor(np.array(a), dtype=(torch.long if i in (1, 2) else torch.float32),
                      device=device) for i, a in enumerate(split))
  data = {"train": to_t(problem.train), "val": to_t(problem.val), "test": to_t(problem.test)}

  def run_wx() -> np.ndarray:
    res = wx.sweep(train, {}, seeds=seeds, progress=False)
    ev = res.metrics["eval"]
    return np.stack([np.asarray(ev["val"]), np.asarray(ev["test"])], axis=2)

  def run_torch() -> np.ndarray:
    return torch.stack([torch_multidigits_run(*per_seed[s], data, margs.canvas, margs.lr,
                                              margs.eval_every)
                        for s in range(seeds)]).cpu().numpy()

  load0 = load_avg()
  t0 = time.perf_counter()
  ev_wx = run_wx()  # compiles
  first_wx = time.perf_counter() - t0
  # Eager PyTorch has nothing to compile, so its first call is already a timed repetition.
  times: dict[str, list[float]] = {"weightax: wx.sweep (mtl.fit + mgda)": [],
                                   "PyTorch + LibMTL MGDA": []}
  cpu: dict[str, list[float]] = {k: [] for k in times}
  ev_t = None
  for _ in range(args.md_reps):
    for name, fn in zip(times, (run_wx, run_torch), strict=True):
      t0, c0 = time.perf_counter(), time.process_time()
      out = fn()
      times[name].append(time.perf_counter() - t0)
      cpu[name].append(time.process_time() - c0)
      if fn is run_torch and ev_t is None:
        ev_t = out
  load1 = load_avg()
  med = {k: statistics.median(v) for k, v in times.items()}
  med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
  names = list(med)
  final = {"weightax": ev_wx[:, -1, 1].mean(0).tolist(), "pytorch": ev_t[:, -1, 1].mean(0).tolist()}
  return {"part": "multidigits", "method": "mgda", "seeds": seeds, "steps": margs.steps,
          "eval_every": margs.eval_every, "batch_size": margs.batch_size,
          "n_train": margs.n_train, "times_s": times, "median_s": med, "cpu_s": cpu,
          "median_cpu_s": med_cpu, "speedup_cpu": med_cpu[names[1]] / med_cpu[names[0]],
          "first_call_s": {names[0]: first_wx},
          "speedup": med[names[1]] / med[names[0]],
          "final_test_metrics_mean_over_seeds [acc left, acc right, MAE sum]": final,
          "load_before": load0, "load_after": load1}


# --------------------------------------------------------------------------------------
# Part 3: focal and GHM-C forward + backward.
# --------------------------------------------------------------------------------------


def losses_agreement(seed: int = 0, shape: tuple[int, int] = (512, 80),
                     momentum: float = 0.75, bins: int = 30, calls: int = 3) -> dict[str, float]:
  """Largest relative differences, in float64, between weightax and the transcriptions.

  Focal: per-element values and the gradient of the sum. GHM-C: the loss
  (mmdetection's ``sum / tot``), its gradient and the running bin counts over
  ``calls`` successive calls from the zero state, the state threaded on both sides.
  """
  r = np.random.default_rng(seed)
  z = r.normal(size=shape) * 3.0
  y = (r.uniform(size=shape) < 0.1).astype(np.float64)
  rel = lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))
                           / max(np.max(np.abs(np.asarray(b))), 1e-300))
  out = {}
  with _enable_x64():
    zj, yj = jnp.asarray(z, jnp.float64), jnp.asarray(y, jnp.float64)
    fl_j, g_j = jax.jit(lambda v: (L.sigmoid_focal_loss(v, yj, alpha=0.25, gamma=2.0),
                                   jax.grad(lambda u: L.sigmoid_focal_loss(u, yj).sum())(v)))(zj)
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    yt = torch.tensor(y, dtype=torch.float64)
    fl_t = tv_sigmoid_focal_loss(zt, yt, alpha=0.25, gamma=2.0)
    (g_t,) = torch.autograd.grad(fl_t.sum(), zt)
    out["focal_value"] = rel(fl_j, fl_t.detach().numpy())
    out["focal_grad"] = rel(g_j, g_t.numpy())

    ghm = MMDetGHMC(bins=bins, momentum=momentum).double()
    state = L.init_ghm_state(bins)

    def f(v, s):
      loss, new = L.ghm_c(v, yj, s, bins=bins, momentum=momentum)
      return loss.mean(), new
    ghm_j = jax.jit(jax.value_and_grad(f, has_aux=True))
    worst = {"ghmc_loss": 0.0, "ghmc_grad": 0.0, "ghmc_acc_sum": 0.0}
    for c in range(calls):
      zc = z + 0.5 * c  # different logits on each call, so the bin counts move
      (lj, state), gj = ghm_j(jnp.asarray(zc, jnp.float64), state)
      zt = torch.tensor(zc, dtype=torch.float64, requires_grad=True)
      lt = ghm(zt, yt, torch.ones_like(yt))
      (gt,) = torch.autograd.grad(lt, zt)
      worst["ghmc_loss"] = max(worst["ghmc_loss"], rel(lj, lt.detach().numpy()))
      worst["ghmc_grad"] = max(worst["ghmc_grad"], rel(gj, gt.numpy()))
      if momentum > 0:
        worst["ghmc_acc_sum"] = max(worst["ghmc_acc_sum"],
                                    rel(state.acc_sum, ghm.acc_sum.numpy()))
    out.update(worst)
  return out


def part_losses(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
  agree = losses_agreement()
  agree0 = losses_agreement(momentum=0.0, bins=10)
  agree["ghmc_loss (momentum 0, 10 bins)"] = agree0["ghmc_loss"]
  agree["ghmc_grad (momentum 0, 10 bins)"] = agree0["ghmc_grad"]
  bins, mom, classes = 30, 0.75, args.loss_classes
  rows = []
  load0 = load_avg()
  for batch in args.loss_batches:
    r = np.random.default_rng(batch)
    z = r.normal(size=(batch, classes)).astype(np.float32)
    y = (r.uniform(size=(batch, classes)) < 0.05).astype(np.float32)
    zj, yj = jnp.asarray(z), jnp.asarray(y)
    zt, yt = torch.as_tensor(z, device=device), torch.as_tensor(y, device=device)
    ones = torch.ones_like(yt)

    focal_j = jax.jit(jax.grad(lambda v: L.sigmoid_focal_loss(v, yj).mean()))
    ghm_j = jax.jit(jax.grad(
        lambda v, s: (lambda o: (o[0].mean(), o[1]))(L.ghm_c(v, yj, s, bins=bins, momentum=mom)),
        has_aux=True))
    ghm_state = [L.init_ghm_state(bins)]
    ghm_t = MMDetGHMC(bins=bins, momentum=mom).to(device)

    # Both sides leave the gradient on their device and wait for it (no copy to the host,
    # which on a GPU would cost more than the loss itself).
    def wx_focal():
      return focal_j(zj).block_until_ready()

    def wx_ghm():
      g, ghm_state[0] = ghm_j(zj, ghm_state[0])
      return jax.block_until_ready(g)

    def t_fwd_bwd(loss_fn):
      v = zt.detach().requires_grad_(True)
      (g,) = torch.autograd.grad(loss_fn(v), v)
      sync(device)
      return g

    variants = {
        "weightax sigmoid_focal_loss": wx_focal,
        "torchvision sigmoid_focal_loss": lambda: t_fwd_bwd(
            lambda v: tv_sigmoid_focal_loss(v, yt, reduction="mean")),
        "weightax ghm_c": wx_ghm,
        "mmdetection GHMC": lambda: t_fwd_bwd(lambda v: ghm_t(v, yt, ones)),
    }
    for _ in range(3):  # compile and warm up beyond the one call interleaved() makes
      for fn in variants.values():
        fn()
    times, cpu = interleaved(variants, args.loss_reps)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows.append({"batch": batch, "classes": classes, "median_s": med,
                 "median_cpu_s": {k: statistics.median(v) for k, v in cpu.items()},
                 "p10_p90_s": {k: [float(np.percentile(v, 10)), float(np.percentile(v, 90))]
                               for k, v in times.items()},
                 "load_after": load_avg()})
  return {"part": "losses", "bins": bins, "momentum": mom, "agreement_float64": agree,
          "rows": rows, "load_before": load0, "load_after": load_avg()}


# --------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------


def markdown(results: list[dict[str, Any]], env: dict[str, Any]) -> str:
  lines = [f"`{env['command']}`", "",
           f"{env['platform']}; JAX {env['jax']} ({env['jax_backend']}), torch {env['torch']} "
           f"(device {env['torch_device']}, {env['torch_threads']} threads = XLA's CPU threads "
           f"{env['xla_cpu_threads']}; OMP_WAIT_POLICY={env['omp_wait_policy']}), "
           f"Python {env['python']}; {env['utc']} UTC.", ""]
  for r in results:
    if r["part"] == "loss_scale":
      lines += [
          f"**Loss-scale study**: {r['runs']} runs (Adam, {len(r['w'])} loss weights log-spaced "
          f"in [{r['w'][0]:g}, {r['w'][-1]:g}] × {r['seeds']} seeds) × {r['steps']} steps, "
          f"full-data CE and |θ| every {r['eval_every']} steps; sweep chunk {r['chunk_size']}; "
          f"median of {len(next(iter(r['times_s'].values())))} interleaved repetitions; "
          f"load average {r['load_before']} before, {r['load_after']} after.", "",
          "| variant | runs timed | median s | runs/s | median CPU s | CPU s / run |",
          "|---|---:|---:|---:|---:|---:|"]
      n_timed = {"weightax: wx.sweep": r["runs"], "PyTorch loop": r["torch_runs"]}
      for k, v in r["median_s"].items():
        lines.append(f"| {k} | {n_timed[k]} | {fmt_s(v)} | {r['runs_per_s'][k]:.3f} | "
                     f"{fmt_s(r['median_cpu_s'][k])} | {r['cpu_s_per_run'][k]:.3f} |")
      a = r["agreement"]
      lines += ["", f"Throughput ratio (runs/s, weightax / PyTorch): **{r['speedup']:.1f}×** "
                f"by wall time, **{r['speedup_cpu']:.1f}×** by CPU time per run. "
                f"Same runs: train-CE curves differ by at most "
                f"{a['max_abs_diff_ce_first_10_evals']:.1e} over the first 10 evaluations and by "
                f"{a['max_abs_diff_ce_final']:.1e} (median {a['median_abs_diff_ce_final']:.1e}) "
                f"at the end; final |θ| by {a['max_rel_diff_param_norm_final']:.1e} (relative).",
                ""]
    elif r["part"] == "multidigits":
      names = list(r["median_s"])
      lines += [
          f"**MultiDigits, MGDA × {r['seeds']} seeds**: {r['steps']} steps, batch "
          f"{r['batch_size']}, {r['n_train']} training images, evaluation every "
          f"{r['eval_every']} steps; median of {len(r['times_s'][names[0]])} interleaved "
          f"repetitions (weightax's after a first, compiling call); load average "
          f"{r['load_before']} before, "
          f"{r['load_after']} after.", "",
          "| variant | first call s (compile incl.) | median s | × weightax | median CPU s |",
          "|---|---:|---:|---:|---:|"]
      base = r["median_s"][names[0]]
      for k in names:
        first = fmt_s(r["first_call_s"][k]) if k in r["first_call_s"] else "(no compilation)"
        lines.append(f"| {k} | {first} | {fmt_s(r['median_s'][k])} | "
                     f"{r['median_s'][k] / base:.1f} | {fmt_s(r['median_cpu_s'][k])} |")
      fm = r["final_test_metrics_mean_over_seeds [acc left, acc right, MAE sum]"]
      lines += ["", f"Ratio of medians (PyTorch / weightax): **{r['speedup']:.1f}×** by wall "
                f"time, **{r['speedup_cpu']:.1f}×** by CPU time. Final test "
                f"metrics (mean over seeds; acc left, acc right, MAE sum): weightax "
                f"{', '.join(f'{v:.3f}' for v in fm['weightax'])}; PyTorch "
                f"{', '.join(f'{v:.3f}' for v in fm['pytorch'])}.", ""]
    elif r["part"] == "losses":
      a = r["agreement_float64"]
      lines += [
          f"**Focal and GHM-C forward + backward** (`.mean()` of the loss, [batch, "
          f"{r['rows'][0]['classes']}] float32 logits, 5% positives; GHM-C with "
          f"{r['bins']} bins, momentum {r['momentum']}, state threaded); weightax jitted, "
          f"PyTorch eager; load average {r['load_before']} before, {r['load_after']} after.", "",
          "Agreement in float64 (largest |difference| / largest |value|): " + ", ".join(
              f"{k} {v:.1e}" for k, v in a.items()) + ".", "",
          "| batch | weightax focal µs | torchvision focal µs | ratio (CPU-time ratio) "
          "| weightax GHM-C µs | mmdetection GHM-C µs | ratio (CPU-time ratio) |",
          "|---:|---:|---:|---:|---:|---:|---:|"]
      for row in r["rows"]:
        m = {k: v * 1e6 for k, v in row["median_s"].items()}
        c = row["median_cpu_s"]
        fj, ft = m["weightax sigmoid_focal_loss"], m["torchvision sigmoid_focal_loss"]
        gj, gt = m["weightax ghm_c"], m["mmdetection GHMC"]
        cf = c["torchvision sigmoid_focal_loss"] / c["weightax sigmoid_focal_loss"]
        cg = c["mmdetection GHMC"] / c["weightax ghm_c"]
        lines.append(f"| {row['batch']} | {fj:.0f} | {ft:.0f} | {ft / fj:.1f}× ({cf:.1f}×) | "
                     f"{gj:.0f} | {gt:.0f} | {gt / gj:.1f}× ({cg:.1f}×) |")
      lines += ["", "(ratio = PyTorch time / weightax time, medians; > 1 means weightax is "
                "faster.)", ""]
  return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
  p.add_argument("--reps", type=int, default=3,
                 help="timed repetitions of the loss-scale part (median reported)")
  p.add_argument("--torch-device", default="cpu", help="PyTorch device: cpu or cuda")
  p.add_argument("--ls-num-w", type=int, default=8, help="loss weights of the loss-scale subset")
  p.add_argument("--ls-seeds", type=int, default=4, help="seeds of the loss-scale subset")
  p.add_argument("--ls-steps", type=int, default=3000, help="steps per loss-scale run")
  p.add_argument("--ls-torch-runs", type=int, default=None,
                 help="runs the PyTorch loop times (default: all), spread over the grid; its "
                      "runs are sequential, so runs/s does not depend on how many")
  p.add_argument("--ls-chunk-size", type=int, default=None,
                 help="sweep chunk (default: a quarter of the runs, as the study)")
  p.add_argument("--md-seeds", type=int, default=3, help="MultiDigits seeds")
  p.add_argument("--md-steps", type=int, default=2000, help="MultiDigits steps")
  p.add_argument("--md-eval-every", type=int, default=100, help="MultiDigits evaluation period")
  p.add_argument("--md-reps", type=int, default=2,
                 help="timed MultiDigits repetitions of each side "
                      "(weightax's after a compiling call)")
  p.add_argument("--md-quick", action="store_true",
                 help="MultiDigits on 600/200/200 images (the study's --quick data sizes)")
  p.add_argument("--loss-batches", default="256,4096,16384",
                 help="comma-separated batch sizes of the loss part")
  p.add_argument("--loss-classes", type=int, default=80, help="classes (sigmoid outputs)")
  p.add_argument("--loss-reps", type=int, default=50, help="repetitions of the loss part")
  p.add_argument("--out", default=None, help="directory for results.md and results.json")
  args = p.parse_args(argv)
  args.parts = [s.strip() for s in args.parts.split(",") if s.strip()]
  bad = [s for s in args.parts if s not in PARTS]
  if bad or not args.parts:
    p.error(f"--parts: expected a subset of {PARTS}; got {args.parts}")
  args.loss_batches = [int(b) for b in args.loss_batches.split(",") if b.strip()]
  if min(args.reps, args.md_reps, args.loss_reps) < 1:
    p.error("--reps, --md-reps and --loss-reps must be at least 1")
  return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  args = parse_args(argv)
  device = torch.device(args.torch_device)
  threads = xla_cpu_threads()
  torch.set_num_threads(threads)  # as many intra-op threads as XLA's CPU client
  env = {"command": "python benchmarks/bench_peers.py " + shlex.join(
             sys.argv[1:] if argv is None else argv),
         "platform": platform.platform(), "python": platform.python_version(),
         "jax": jax.__version__, "jax_backend": jax.default_backend(),
         "torch": torch.__version__, "torch_device": str(device),
         "torch_threads": torch.get_num_threads(), "xla_cpu_threads": threads,
         "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
         "utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
  if device.type == "cuda":
    env["gpu"] = torch.cuda.get_device_name(device)
  print(f"bench_peers: {env}", flush=True)
  runners = {"loss_scale": part_loss_scale, "multidigits": part_multidigits,
             "losses": part_losses}
  results = []
  for part in args.parts:
    t0 = time.perf_counter()
    print(f"[{part}] running (load average {load_avg()}) ...", flush=True)
    results.append(runners[part](args, device))
    print(f"[{part}] done in {time.perf_counter() - t0:.0f} s (load average {load_avg()})",
          flush=True)
    if args.out:  # after every part, so a run cut short keeps what it finished
      out = Path(args.out)
      out.mkdir(parents=True, exist_ok=True)
      (out / "results.md").write_text(markdown(results, env) + "\n")
      (out / "results.json").write_text(json.dumps({"env": env, "results": results}, indent=1,
                                                   default=float) + "\n")
  print(markdown(results, env))
  return results


if __name__ == "__main__":
  main()
