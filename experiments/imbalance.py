#!/usr/bin/env python
"""Which sample-weighting loss helps on long-tailed digits? Measured against plain CE.

A small MLP is trained on a long-tailed subset of scikit-learn's digits (class c keeps
``n_max · ρ^{-c/9}`` examples; ρ = 10 and 100) with plain cross-entropy and with each loss
of ``weightax.losses``, sweeping its key hyperparameter and several seeds as ONE compiled
``weightax.sweep`` per loss and imbalance ratio:

* ``ce``: softmax cross-entropy, the baseline;
* ``focal``: one-vs-rest sigmoid focal loss (RetinaNet's form), γ;
* ``softmax_focal``: multi-class focal loss, γ;
* ``cb``: class-balanced cross-entropy (Cui et al. 2019), β;
* ``ldam``: LDAM on a cosine head with scale s (Cao et al. 2019), the largest margin, with
  and without deferred re-weighting (DRW); margin 0 is the cosine head with plain CE;
* ``la``: logit-adjusted cross-entropy (Menon et al. 2021), τ;
* ``ghm``: GHM-C on one-vs-rest sigmoids (Li et al. 2019), the bin-count momentum; its bin
  counts are carried through the training scan.

The held-out set is balanced (``test_per_class`` per class) and split per class into a
validation part, used only to pick each loss's hyperparameter, and a test part on which every
reported number is measured: balanced accuracy (mean per-class recall), and the recall of the
3 most and 3 least frequent training classes. All configurations with the same seed share
their initialisation and minibatches, so comparisons with CE are paired.

Run ``python experiments/imbalance.py --help`` for every option.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _report  # noqa: E402
import imbalance_report as report  # noqa: E402

import weightax as wx  # noqa: E402
from weightax import losses as L  # noqa: E402
from weightax.datasets import long_tailed_split  # noqa: E402
from weightax.nn import MLP  # noqa: E402
from weightax.runs import run_dir  # noqa: E402

NUM_CLASSES = 10
# loss -> (hyperparameter axis, option holding its values, default values)
LOSSES: dict[str, tuple[str | None, str | None, str]] = {
    "ce": (None, None, ""),
    "focal": ("gamma", "focal_gammas", "0.5,1,2,5"),
    "softmax_focal": ("gamma", "softmax_focal_gammas", "0.5,1,2,5"),
    "cb": ("beta", "cb_betas", "0.9,0.99,0.999,0.9999"),
    "ldam": ("max_margin", "ldam_margins", "0,0.25,0.5,1"),
    "la": ("tau", "la_taus", "0.5,1,1.5,2"),
    "ghm": ("momentum", "ghm_momenta", "0,0.5,0.75,0.9"),
}
# Values of the hyperparameters a loss does not use: any finite value would do.
NEUTRAL = {"gamma": 0.0, "beta": 0.0, "max_margin": 0.0, "drw": 0, "tau": 0.0, "momentum": 0.0}
# Options that change the compiled training program (the data are keyed separately).
TRAIN_SETTINGS = ("steps", "eval_every", "batch_size", "lr", "hidden", "focal_alpha",
                  "ldam_scale", "drw_start", "drw_beta", "ghm_bins")


def _floats(text: str) -> list[float]:
  return [float(v) for v in text.split(",") if v.strip()]


INF = float("inf")
# option -> (low, high, low end open, high end open): the range every value must lie in.
# NaN lies in none; a value must stay in range as a 32-bit float, as it is traced (a β of
# 0.99999999 would become 1).
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "ratios": (1.0, INF, False, True),
    "focal_gammas": (0.0, INF, False, True),
    "softmax_focal_gammas": (0.0, INF, False, True),
    "cb_betas": (0.0, 1.0, False, True),
    "ldam_margins": (0.0, INF, False, True),
    "la_taus": (-INF, INF, True, True),
    "ghm_momenta": (0.0, 1.0, False, True),
    "lr": (0.0, INF, True, True),
    "focal_alpha": (0.0, 1.0, False, False),
    "ldam_scale": (0.0, INF, True, True),
    "drw_start": (0.0, 1.0, False, False),
    "drw_beta": (0.0, 1.0, False, True),
}
# integer option -> its smallest value (the largest, where there is one, is checked apart)
MINIMUM = {"seeds": 2, "steps": 1, "eval_every": 1, "batch_size": 1, "hidden": 1,
           "data_seed": 0, "ghm_bins": 1, "chunk_size": 1}


interval = _report.interval


def out_of_range(values: list[float], lo: float, hi: float, lo_open: bool,
                 hi_open: bool) -> list[float]:
  """The values (or their 32-bit casts) outside the interval; NaN always is."""
  def inside(v: float) -> bool:
    return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

  with np.errstate(over="ignore"):
    return [v for v in values if not (inside(v) and inside(float(np.float32(v))))]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=_report.HelpFormatter,
  )
  r = lambda name: "finite" if RANGES[name][:2] == (-INF, INF) else f"in {interval(*RANGES[name])}"
  p.add_argument("--out", default=None,
                 help="output directory (default: runs/imbalance/<UTC time>)")
  p.add_argument("--ratios", default="10,100",
                 help=f"comma-separated imbalance ratios ρ, each {r('ratios')}")
  p.add_argument("--losses", default=",".join(LOSSES), help="comma-separated subset of losses")
  p.add_argument("--seeds", type=int, default=5,
                 help="seeds per configuration (at least 2: a verdict needs a paired interval)")
  p.add_argument("--steps", type=int, default=1000,
                 help="optimizer steps per run (a positive multiple of --eval-every)")
  p.add_argument("--eval-every", type=int, default=50, help="steps between evaluations")
  p.add_argument("--batch-size", type=int, default=64, help="minibatch size")
  p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (every loss), > 0")
  p.add_argument("--hidden", type=int, default=64, help="width of the two hidden layers")
  p.add_argument("--data-seed", type=int, default=0,
                 help="seed of the long-tailed selection (>= 0)")
  p.add_argument("--test-per-class", type=int, default=50,
                 help="balanced held-out examples per class (validation + test), at most 173: "
                 "digits' smallest class has 174 images, and the rest of each class trains")
  p.add_argument("--val-per-class", type=int, default=20,
                 help="of those, validation examples per class (to pick hyperparameters); "
                 "at least 1 and fewer than --test-per-class")
  p.add_argument("--head-tail-k", type=int, default=3,
                 help=f"head / tail = the k most / least frequent training classes, "
                 f"1 <= k <= {NUM_CLASSES // 2}")
  for name, (axis, opt, default) in LOSSES.items():
    if opt is not None:
      p.add_argument(f"--{opt.replace('_', '-')}", default=default,
                     help=f"comma-separated {axis} values of {name}, each {r(opt)}")
  p.add_argument("--focal-alpha", type=float, default=0.25,
                 help="α of the sigmoid focal loss (weight of the positive class), "
                 f"{r('focal_alpha')}")
  p.add_argument("--ldam-scale", type=float, default=30.0,
                 help="LDAM's scale s of cosine logits, > 0")
  p.add_argument("--drw-start", type=float, default=0.8,
                 help="fraction of training after which LDAM's DRW turns class weights on, "
                 f"{r('drw_start')}")
  p.add_argument("--drw-beta", type=float, default=0.9999,
                 help=f"β of DRW's class-balanced weights, {r('drw_beta')}")
  p.add_argument("--ghm-bins", type=int, default=30, help="GHM-C's number of bins")
  p.add_argument("--chunk-size", type=int, default=None,
                 help="configurations per compiled chunk; every loss's sweep reuses one "
                 "program of this size (default: number of ratios × seeds)")
  p.add_argument("--quick", action="store_true",
                 help="tiny run for tests: 2 seeds, 100 steps, evaluations every 50, the "
                 "2nd and 3rd default value of each hyperparameter; options given explicitly "
                 "are kept")
  args = p.parse_args(argv)
  args.command = " ".join(["python experiments/imbalance.py",
                           *(sys.argv[1:] if argv is None else argv)])
  quick_grids = {opt: ",".join(default.split(",")[1:3])
                 for _, opt, default in LOSSES.values() if opt is not None}
  _report.apply_quick(p, args, argv, seeds=2, steps=100, eval_every=50, **quick_grids)
  _report.check_minimums(p, args, MINIMUM, {"seeds": " (a verdict needs a paired interval)"})
  if args.steps % args.eval_every:
    p.error(f"--steps ({args.steps}) must be a positive multiple of --eval-every "
            f"({args.eval_every})")
  _report.check_digits_split(p, args)
  if not 1 <= args.head_tail_k <= NUM_CLASSES // 2:
    p.error(f"--head-tail-k must be in [1, {NUM_CLASSES // 2}] (the head and the tail may not "
            f"overlap); got {args.head_tail_k}")
  args.losses = [n.strip() for n in args.losses.split(",") if n.strip()]
  unknown = [n for n in args.losses if n not in LOSSES]
  if unknown or "ce" not in args.losses or len(set(args.losses)) < len(args.losses):
    p.error(f"--losses: expected a subset of {list(LOSSES)} that includes ce, each loss once; "
            f"got {args.losses}")
  lists = {}
  for name in RANGES:
    flag = f"--{name.replace('_', '-')}"
    value = getattr(args, name)
    if isinstance(value, str):
      try:
        value = lists[name] = _floats(value)
      except ValueError:
        p.error(f"{flag}: expected comma-separated numbers; got {value!r}")
      if not value:
        p.error(f"{flag}: needs at least one value")
      labels = {f"{v:g}" for v in value}  # the report's labels (and 32-bit values) differ
      with np.errstate(over="ignore"):
        if len(labels) < len(value) or len(set(np.float32(value))) < len(value):
          p.error(f"{flag}: expected distinct values; got {value}")
    bad = out_of_range(value if isinstance(value, list) else [value], *RANGES[name])
    if bad:
      what = f"{flag}: each value" if isinstance(getattr(args, name), str) else flag
      p.error(f"{what} must be {r(name)}; got {bad[0]!r}")
  args.ratios = lists["ratios"]
  args.hparams = {n: lists[LOSSES[n][1]] for n in args.losses if LOSSES[n][1]}
  return args


def init_model(hidden: int, key: jax.Array) -> tuple[Any, Callable[..., tuple]]:
  """A 64-h-h-10 ReLU MLP: ``(params, heads(params, x) -> (linear logits, cosine logits))``.

  The cosine head (LDAM's) gives cosine similarities between the normalised last hidden
  features and the normalised class weights, without bias. Both heads share the
  parameters, so a seed means one initialisation for every loss.
  """
  graphdef, params = nnx.split(MLP((64, hidden, hidden, NUM_CLASSES), rngs=nnx.Rngs(params=key)),
                               nnx.Param)

  def heads(p: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    model = nnx.merge(graphdef, p)
    for layer in model.layers[:-1]:
      x = jax.nn.relu(layer(x))
    last = model.layers[-1]
    unit = lambda v, axis: v * jax.lax.rsqrt(jnp.sum(v**2, axis, keepdims=True) + 1e-12)
    return last(x), unit(x, -1) @ unit(last.kernel[...], 0)

  return params, heads


def per_class_recall(labels: jax.Array, preds: jax.Array, num_classes: int) -> jax.Array:
  """Recall of every class, ``[C]``: correct predictions of class c / examples of class c.

  The mean over classes is the balanced accuracy. A class absent from ``labels`` gets NaN
  (its recall is undefined), so a mean over it is NaN rather than silently optimistic.
  Works on NumPy and JAX arrays, inside ``jit``/``vmap``.
  """
  onehot = jax.nn.one_hot(labels, num_classes)
  hits = jnp.sum(onehot * (preds == labels)[:, None], axis=0)
  total = jnp.sum(onehot, axis=0)
  return jnp.where(total > 0, hits / jnp.maximum(total, 1), jnp.nan)


def ldam_mean(weighted_losses: jax.Array, example_weights: jax.Array) -> jax.Array:
  """LDAM-DRW's batch loss: ``Σ_i w_{y_i} l_i / Σ_i w_{y_i}``, PyTorch's weighted mean.

  ``weighted_losses`` are the per-example ``w_{y_i} l_i`` (``ldam_loss`` with
  ``class_weights``), ``example_weights`` the ``w_{y_i}``; the reference code
  (``F.cross_entropy(..., weight=w)``, mean reduction) divides by the weights' sum.
  """
  return jnp.sum(weighted_losses) / jnp.sum(example_weights)


def loss_branches(args: argparse.Namespace) -> list[Callable]:
  """One ``(hp, logits, labels, ghm_state, step, counts) -> (mean loss, ghm_state)`` per loss.

  They are listed in ``LOSSES`` order and selected by ``hp["loss"]`` with ``lax.switch``.
  Hyperparameters of the other losses hold neutral values that keep every branch finite
  (under ``vmap`` the switch evaluates all of them, and a NaN in a discarded branch would
  still poison the gradient).
  """
  drw_step = int(args.drw_start * args.steps)

  def ce(hp, z, y, s, t, n):
    return L.weighted_softmax_cross_entropy(z, y).mean(), s

  def focal(hp, z, y, s, t, n):
    onehot = jax.nn.one_hot(y, NUM_CLASSES)
    return L.sigmoid_focal_loss(z, onehot, alpha=args.focal_alpha,
                                gamma=hp["gamma"]).sum(-1).mean(), s

  def softmax_focal(hp, z, y, s, t, n):
    return L.softmax_focal_loss(z, y, gamma=hp["gamma"]).mean(), s

  def cb(hp, z, y, s, t, n):
    w = L.class_balanced_weights(n, beta=hp["beta"])
    return L.weighted_softmax_cross_entropy(z, y, class_weights=w).mean(), s

  def ldam(hp, z, y, s, t, n):
    on = (hp["drw"] > 0) & (t >= drw_step)
    w = jnp.where(on, L.class_balanced_weights(n, beta=args.drw_beta), jnp.ones_like(n))
    per = L.ldam_loss(z, y, class_counts=n, max_margin=hp["max_margin"],
                      scale=args.ldam_scale, class_weights=w)
    # The reference code's F.cross_entropy(weight=w) is a weighted mean: Σ w_y l / Σ w_y (a
    # plain mean would shrink the loss by the mean weight when DRW starts). Equal to the
    # mean while w = 1.
    return ldam_mean(per, w[y]), s

  def la(hp, z, y, s, t, n):
    return L.logit_adjusted_cross_entropy(z, y, class_priors=n / n.sum(),
                                          tau=hp["tau"]).mean(), s

  def ghm(hp, z, y, s, t, n):
    # ghm_c returns BCE_i·β_i; mmdetection's GHMC divides their sum by the element count
    # (batch × classes, no label weights here), i.e. the mean.
    loss, s = L.ghm_c(z, jax.nn.one_hot(y, NUM_CLASSES), s, bins=args.ghm_bins,
                      momentum=hp["momentum"])
    return loss.mean(), s

  fns = {"ce": ce, "focal": focal, "softmax_focal": softmax_focal, "cb": cb, "ldam": ldam,
         "la": la, "ghm": ghm}
  return [fns[name] for name in LOSSES]


class Data(NamedTuple):
  """The long-tailed sets of every ratio, stacked on a leading ratio axis.

  Training sets are zero-padded to the largest; ``n_train[r]`` says how many rows are real.
  """

  x: np.ndarray  # [R, n_max, 64]
  y: np.ndarray  # [R, n_max]
  n_train: np.ndarray  # [R]
  counts: np.ndarray  # [R, C]
  val: tuple[np.ndarray, np.ndarray]  # [R, n_val, 64], [R, n_val]
  test: tuple[np.ndarray, np.ndarray]  # [R, n_test, 64], [R, n_test]


def split_held_out(test, val_per_class: int):
  """Per class, the first ``val_per_class`` held-out examples validate, the rest test."""
  rank = np.zeros(len(test.y), np.int64)
  for c in range(NUM_CLASSES):
    idx = np.flatnonzero(test.y == c)
    rank[idx] = np.arange(len(idx))
  val = rank < val_per_class
  return (test.x[val], test.y[val]), (test.x[~val], test.y[~val])


def load_data(args: argparse.Namespace) -> Data:
  """``long_tailed_split`` at every ratio, its held-out set split into validation and test."""
  parts = [long_tailed_split(imbalance_ratio=r, test_per_class=args.test_per_class,
                             seed=args.data_seed) for r in args.ratios]
  n = np.array([len(tr.y) for tr, _, _ in parts])
  x = np.zeros((len(parts), n.max(), 64), np.float32)
  y = np.zeros((len(parts), n.max()), np.int32)
  for i, (tr, _, _) in enumerate(parts):
    x[i, : n[i]], y[i, : n[i]] = tr.x, tr.y
  held = [split_held_out(te, args.val_per_class) for _, te, _ in parts]
  stack = lambda j, k: np.stack([h[j][k] for h in held])
  return Data(x, y, n, np.stack([c for _, _, c in parts]), (stack(0, 0), stack(0, 1)),
              (stack(1, 0), stack(1, 1)))


_TRAINS: dict[Any, Callable] = {}


def make_train(args: argparse.Namespace, data: Data) -> Callable:
  """``train(hparams, key)``: one program for every loss, ratio and hyperparameter.

  ``hparams`` holds the loss index, the ratio index and every loss's hyperparameter, so
  each loss's sweep runs the same compiled program (XLA compilation, not training,
  dominates this small study's time). It returns the per-class recall on validation and
  test at every evaluation and the mean training loss between evaluations. The loop is
  written here rather than with ``wx.fit`` because the training set is picked per
  configuration from arrays padded to the largest ratio's size, and batches must come
  from its first ``n_train[r]`` rows; GHM-C's bin counts and DRW's step counter ride in
  the carry (``fit``'s ``loss_state`` would hold them for an ordinary data set).
  Functions are cached per setting so a repeated run reuses the compiled program.
  """
  cache_key = (repr({k: v for k, v in sorted(vars(args).items()) if k in TRAIN_SETTINGS}),
               *(a.tobytes() for a in (data.x, data.y, data.counts, *data.val, *data.test)))
  if cache_key in _TRAINS:
    return _TRAINS[cache_key]
  x, y, n_train = jnp.asarray(data.x), jnp.asarray(data.y), jnp.asarray(data.n_train)
  counts = jnp.asarray(data.counts, jnp.float32)
  (xv, yv), (xt, yt) = [(jnp.asarray(a), jnp.asarray(b)) for a, b in (data.val, data.test)]
  branches = loss_branches(args)
  is_ldam = list(LOSSES).index("ldam")
  opt = optax.adam(args.lr)
  n_outer = args.steps // args.eval_every

  def train(hp: dict[str, jax.Array], key: jax.Array) -> dict[str, jax.Array]:
    r, cosine = hp["ratio"], hp["loss"] == is_ldam
    k_init, k_fit = jax.random.split(key)
    params, heads = init_model(args.hidden, k_init)
    logits = lambda p, xx: jnp.where(cosine, *heads(p, xx)[::-1])

    def evaluate(p):
      pred = lambda xx: jnp.argmax(logits(p, xx), -1)
      return {"val_recall": per_class_recall(yv[r], pred(xv[r]), NUM_CLASSES),
              "test_recall": per_class_recall(yt[r], pred(xt[r]), NUM_CLASSES)}

    def step(carry, k):
      p, o, s, t = carry
      idx = jax.random.randint(k, (args.batch_size,), 0, n_train[r])
      xb, yb = x[r][idx], y[r][idx]
      obj = lambda q: jax.lax.switch(hp["loss"], branches, hp, logits(q, xb), yb, s, t,
                                     counts[r])
      (loss, s), g = jax.value_and_grad(obj, has_aux=True)(p)
      u, o = opt.update(g, o, p)
      return (optax.apply_updates(p, u), o, s, t + 1), loss

    def outer(carry, ks):
      carry, losses = jax.lax.scan(step, carry, ks)
      return carry, (jnp.mean(losses), evaluate(carry[0]))

    keys = jax.random.split(k_fit, args.steps).reshape(n_outer, args.eval_every)
    carry = (params, opt.init(params), L.init_ghm_state(args.ghm_bins), jnp.zeros((), jnp.int32))
    ev0 = evaluate(params)
    _, (loss_curve, ev) = jax.lax.scan(outer, carry, keys)
    ev = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), ev0, ev)
    return {"loss": loss_curve, **ev}

  _TRAINS[cache_key] = train
  return train


def run_all(args: argparse.Namespace, data: Data) -> dict[str, wx.SweepResult]:
  """One sweep per loss over ratios × its hyperparameter × seeds: ``{loss: SweepResult}``.

  Every sweep has every hyperparameter axis (neutral single values for the other losses'),
  so all of them share one compiled program of ``chunk_size`` configurations.
  """
  train = make_train(args, data)
  chunk = args.chunk_size or len(args.ratios) * args.seeds
  results = {}
  for name in args.losses:
    grid = {"loss": [list(LOSSES).index(name)], "ratio": list(range(len(args.ratios)))}
    grid |= {a: args.hparams[name] if a == LOSSES[name][0] else [NEUTRAL[a]] for a in NEUTRAL}
    if name == "ldam":
      grid["drw"] = [0, 1]
    t0 = time.perf_counter()
    results[name] = wx.sweep(train, grid, seeds=args.seeds, chunk_size=chunk, progress=False,
                             desc=f"imbalance {name}")
    print(f"  {name}: {len(results[name])} runs in {time.perf_counter() - t0:.1f} s", flush=True)
  return results


def own_axes(name: str) -> list[str]:
  """The grid axes (besides loss, ratio and seed) that ``name``'s sweep varies."""
  axis = LOSSES[name][0]
  return [] if axis is None else [axis, "drw"] if name == "ldam" else [axis]


def main(argv: list[str] | None = None) -> dict:
  args = parse_args(argv)  # every check, before a run directory exists
  with run_dir("imbalance", args.out) as out:  # an interrupted run leaves no empty directory
    return _run(args, out)


def _run(args: argparse.Namespace, out: Path) -> dict:
  n_cfg = sum((len(args.hparams.get(n, [0])) * (2 if n == "ldam" else 1)) for n in args.losses)
  print(f"imbalance: {len(args.ratios)} ratios x {n_cfg} loss settings x {args.seeds} seeds of "
        f"{args.steps} steps; one sweep per loss, one compiled program ...", flush=True)
  t0 = time.perf_counter()
  data = load_data(args)
  results = run_all(args, data)
  elapsed = time.perf_counter() - t0
  print(f"imbalance: sweeps done in {elapsed:.1f} s; analysing ...", flush=True)
  own = {n: own_axes(n) for n in args.losses}
  summary = report.write_all(out, results, data, own, args, elapsed)
  print(report.answer_text(summary))
  print(f"\nReport: {out / 'summary.md'}")
  return summary


if __name__ == "__main__":
  main()
