"""Error of the bfloat16 similarity matmul (float32 accumulation and statistics) against float32.

    python benchmarks/bf16_error.py          # CPU or GPU; M = 4096 rows, d = 128, tile 1024

Prints, per loss, the relative change of the loss value and ``||g_bf16 - g_f32|| / ||g_f32||`` of
its gradient with respect to the features (numbers recorded in docs/benchmarks.md).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

import contrastive_jax as cj  # pylint: disable=wrong-import-position

L = cj.losses


def main():
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(2048, 2, 128)).astype(np.float32)
  labels = rng.integers(0, 256, 2048).astype(np.float32)
  cdf = np.asarray(L.fit_ecdf(labels)(labels))
  losses = {
      "supcon": lambda f, **k: L.supcon(f, labels, **k),
      "adacon": lambda f, **k: L.adacon(f, labels, cdf, **k),
      "accon": lambda f, **k: L.accon(f, labels, 256.0, **k),
      "simclr": lambda f, **k: L.simclr(f, **k),
  }
  for name, fn in losses.items():
    exact = jax.jit(jax.value_and_grad(lambda f, fn=fn: fn(f, impl="blockwise", tile=1024)))
    low = jax.jit(jax.value_and_grad(lambda f, fn=fn: fn(f, impl="blockwise", tile=1024,
                                                          matmul_dtype=jnp.bfloat16)))
    (v, g), (vb, gb) = exact(feats), low(feats)
    print(f"{name}: |dL|/L = {abs(float(vb - v)) / abs(float(v)):.2e}, "
          f"||dg||/||g|| = {float(jnp.linalg.norm(gb - g) / jnp.linalg.norm(g)):.2e}")


if __name__ == "__main__":
  main()
