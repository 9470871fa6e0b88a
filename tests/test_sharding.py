"""Sharding: a sweep spread over two (virtual CPU) devices, and aggregators in shard_map.

XLA's device count is fixed when JAX starts, so the check runs in a fresh
interpreter with ``--xla_force_host_platform_device_count=2``.
"""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, PartitionSpec as P
    import weightax as wx

    assert jax.device_count() == 2, jax.devices()

    def train(hp, key):
      p = jax.random.normal(key, (3,))
      opt = optax.inject_hyperparams(optax.sgd)(learning_rate=hp["lr"])
      def step(c, _):
        p, s = c
        g = jax.grad(lambda p: jnp.sum((p - 1.0) ** 2))(p)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), jnp.sum(p)
      _, curve = jax.lax.scan(step, (p, opt.init(p)), None, length=5)
      return {"curve": curve}

    grid = {"lr": [0.1, 0.2, 0.3]}  # 3 x 3 seeds = 9 configs: padded to a multiple of 2
    both = wx.sweep(train, grid, seeds=3)
    one = wx.sweep(train, grid, seeds=3, devices=jax.devices()[:1])
    np.testing.assert_allclose(both.metrics["curve"], one.metrics["curve"], rtol=1e-6)
    # One device that is not the default one: the program must run there (it ran on
    # device 0 when a single device was given).
    import sys
    where = lambda hp, key: {"x": hp["lr"] * 2.0}
    second = jax.devices()[1]
    wx.sweep(where, {"lr": [1.0]}, devices=[second])
    compiled = sys.modules["weightax.sweep"]._COMPILED
    progs = [c for (kind, fn, *_), (c, _) in compiled.items() if fn is where]
    assert progs and all(
        set(s.device_set) == {second}
        for c in progs for s in jax.tree.leaves(c.input_shardings)), progs

    # every aggregator inside shard_map, one problem per device
    mesh = Mesh(np.array(jax.devices()), ("d",))
    grads = {"w": jax.random.normal(jax.random.key(0), (2, 3, 5))}  # [devices, K, params]
    losses = jnp.abs(jax.random.normal(jax.random.key(1), (2, 3))) + 0.5
    for name in ["linear_scalarization", "mgda", "pcgrad", "cagrad", "imtl_g", "upgrad",
                 "nash_mtl", "dwa", "uncertainty_weighting", "gradnorm",
                 "dualproj", "aligned_mtl", "geometric_loss", "imtl", "krum", "trimmed_mean",
                 "famo", "fairgrad", "stch", "gradvac",
                 "config", "excess_mtl",
                 "graddrop", "db_mtl", "moco", "sdmgrad", "modo"]:
      tx = getattr(wx, name)(num_tasks=3) if name in ("dwa", "uncertainty_weighting",
                                                     "gradnorm", "imtl", "famo", "gradvac",
                                                     "excess_mtl", "db_mtl", "moco",
                                                     "sdmgrad", "modo") else (
          getattr(wx, name)())
      def per_device(g, l):
        g = jax.tree.map(lambda x: x[0], g)
        state = tx.init({"w": g["w"][0]})
        u, _ = tx.update(g, state, {"w": g["w"][0]}, task_losses=l[0],
                         key=jax.random.key(3))  # pcgrad's random order
        return jax.tree.map(lambda x: x[None], u)
      f = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("d"), P("d")),
                                out_specs=P("d")))
      out = f(grads, losses)
      for i in range(2):
        ref, _ = tx.update(jax.tree.map(lambda x: x[i], grads), tx.init({"w": grads["w"][i, 0]}),
                           {"w": grads["w"][i, 0]}, task_losses=losses[i],
                           key=jax.random.key(3))
        np.testing.assert_allclose(out["w"][i], ref["w"], rtol=2e-4, atol=1e-6, err_msg=name)
    print("SHARDING-OK")
''')


def test_sweep_and_aggregators_on_two_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                        env=env, timeout=600)
  assert proc.returncode == 0 and "SHARDING-OK" in proc.stdout, proc.stderr[-3000:]
