"""Shared test settings: JAX on the CPU, float32 by default, deterministic."""

import jax

# Tests assert dtypes (float32, bfloat16); x64 would change every default dtype.
jax.config.update("jax_enable_x64", False)
