"""Where the dense layers' backward time goes (issue 23's "weight-side work once per step"), side by side in one
process.

    .venv/bin/python benchmarks/weight_layout.py [--shapes tiny,cpu] [--rounds 5]

1. The matmuls alone at the cpu shape's sizes (B x T = 1536 rows): x . W (the forward), dy . W^T as the backward
   runs it (a dot contracting the weight's output axis, no copy), and dy . W^T with W^T made once beforehand (the
   copy a loop would hoist out of its body).
2. looprec's full train step (`vs_pytorch.looprec_step`: forward, backward, AdamW, float32) with the dense layers
   (a) as Flax runs them, one `lax.dot_general` over the B x T x D input, (b) as one 2-D matmul (the input's
   leading axes flattened into rows), each also under `remat=dots`. (b) replaces `lax.dot_general` inside
   `flax.linen.linear` while the step is traced; each row prints the largest parameter difference from (a) after
   `--check-steps` steps (0: bitwise).
Median ms over interleaved rounds; ratio = (a)'s time / the row's time.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time
import types

import flax.linen.linear as flax_linear
import jax
import jax.numpy as jnp
import numpy as np

import vs_pytorch
from looprec.config import TrainConfig


def matrix_dot(x, kernel, dimension_numbers, precision=None, preferred_element_type=None):
  """A dense layer's dot as one 2-D matmul (input rows x contracted axes) . (contracted axes x features)."""
  (x_axes, _), _ = dimension_numbers
  n = len(x_axes)
  rows, features = x.shape[:x.ndim - n], kernel.shape[n:]
  y = jax.lax.dot(x.reshape(math.prod(rows), -1), kernel.reshape(math.prod(kernel.shape[:n]), -1),
                  precision=precision, preferred_element_type=preferred_element_type)
  return y.reshape(rows + features)


@contextlib.contextmanager
def flax_dot(dot):
  """flax.linen.linear's lax with dot_general replaced (None: unchanged)."""
  if dot is None:
    yield
    return
  saved = flax_linear.lax
  flax_linear.lax = types.SimpleNamespace(**{**{k: getattr(saved, k) for k in dir(saved) if not k.startswith("__")},
                                             "dot_general": dot})
  try:
    yield
  finally:
    flax_linear.lax = saved


def time_matmuls(rounds: int):
  rng = np.random.default_rng(0)
  for d_in, d_out in ((256, 768), (256, 1024), (1024, 256)):
    w = jnp.asarray(rng.standard_normal((d_in, d_out), np.float32))
    wt = jnp.asarray(np.ascontiguousarray(np.asarray(w).T))
    x = jnp.asarray(rng.standard_normal((1536, d_in), np.float32))
    dy = jnp.asarray(rng.standard_normal((1536, d_out), np.float32))
    fns = {"x . W": (jax.jit(lambda x, w: x @ w), x, w),
           "dy . W^T (transposed operand)": (jax.jit(lambda d, w: jax.lax.dot_general(d, w, (((1,), (1,)), ((), ())))),
                                             dy, w),
           "dy . W^T (W^T made once)": (jax.jit(lambda d, wt: d @ wt), dy, wt)}
    times = {k: [] for k in fns}
    for f, a, b in fns.values():
      f(a, b).block_until_ready()
    for _ in range(rounds):
      for k, (f, a, b) in fns.items():
        for _ in range(20):
          start = time.perf_counter()
          f(a, b).block_until_ready()
          times[k].append(time.perf_counter() - start)
    print(f"  1536 x {d_in} x {d_out}: " + ", ".join(f"{k} {statistics.median(v) * 1e3:.2f} ms"
                                                    for k, v in times.items()))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shapes", default="tiny,cpu")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--check-steps", type=int, default=10)
  args = parser.parse_args()
  print("matmuls alone (median ms):")
  time_matmuls(args.rounds)
  for name in args.shapes.split(","):
    shape = vs_pytorch.SHAPES[name]
    batch = vs_pytorch.make_batch(np.random.default_rng(0), shape[4], shape[5], shape[6])
    rows, runs = {}, {}
    for dense, dot in (("flax", None), ("2-D", matrix_dot)):
      for variant in ("looprec", "remat=dots"):
        with flax_dot(dot):
          run, _ = vs_pytorch.looprec_step(shape, TrainConfig(), batch, variant)
          rows[(dense, variant)] = jax.device_get(run(args.check_steps))  # traced and compiled here, dot in place
        runs[(dense, variant)] = run
    base = jax.tree_util.tree_leaves(rows[("flax", "looprec")])
    times = {k: [] for k in runs}
    n = 1 if name != "tiny" else 50
    for _ in range(args.rounds):
      for k, run in runs.items():
        start = time.perf_counter()
        run(n)
        times[k].append((time.perf_counter() - start) / n)
    ref = statistics.median(times[("flax", "looprec")])
    print(f"{name} {shape} (median ms/step over {args.rounds} rounds; ratio = flax dense, default scan / row):")
    for k, ts in times.items():
      diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(base, jax.tree_util.tree_leaves(rows[k])))
      print(f"  dense {k[0]:<5} {k[1]:<11} {statistics.median(ts) * 1e3:8.1f} ms  {ref / statistics.median(ts):.2f}x"
            f"  params after {args.check_steps} steps differ by {diff:.1e}")


if __name__ == "__main__":
  main()
