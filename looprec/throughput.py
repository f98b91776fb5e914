"""Throughput of training: examples/s, tokens/s and model FLOP utilisation (MFU).

MFU = the step's model FLOPs (from XLA's cost analysis of the step with its depth loop unrolled, since the cost
analysis counts a while-loop body once; no remat recomputation) x steps/s / (peak FLOP/s per device x devices).
Peaks come from a table of dense matmul peaks per chip for accelerators and from a measured matmul on CPU.
"""
from __future__ import annotations

import collections
import functools
import time

import jax
import jax.numpy as jnp

# Dense peak TFLOP/s per chip: (bf16, float32 matmuls as XLA runs them by default: bf16 passes on TPU, TF32 on
# NVIDIA GPUs). Matched as substrings of `device_kind`, first match wins (so "TPU v5 lite" before "TPU v5").
PEAK_TFLOPS = (
    ("TPU v4", (275.0, 275.0)),
    ("TPU v5 lite", (197.0, 197.0)),
    ("TPU v5e", (197.0, 197.0)),
    ("TPU v5", (459.0, 459.0)),  # v5p
    ("TPU v6 lite", (918.0, 918.0)),
    ("TPU v6e", (918.0, 918.0)),
    ("A100", (312.0, 156.0)),
    ("H100", (989.5, 494.7)),  # SXM; PCIe parts are slower, so MFU reads low there
    ("H200", (989.5, 494.7)),
)


@functools.lru_cache(maxsize=None)
def cpu_matmul_peak(dtype: str, n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of the best of `repeats` jitted n x n matmuls on this CPU (all its threads), in dtype."""
  a = jnp.ones((n, n), jnp.dtype(dtype))
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


def peak_flops(dtype: str, device=None) -> float | None:
  """Peak FLOP/s of one device for matmuls in dtype (bfloat16 | float32); None for an unknown accelerator."""
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    return cpu_matmul_peak(dtype)
  for name, (bf16, fp32) in PEAK_TFLOPS:
    if name in device.device_kind:
      return (bf16 if dtype == "bfloat16" else fp32) * 1e12
  return None


class Meter:
  """Counts the train steps (and their loop counts) between two host syncs and turns them into rates. `restart`
  after anything that is not a train step (an evaluation, a checkpoint), so the rates cover training only."""

  def __init__(self, flops_of, peak_of, n_devices: int):
    """flops_of(n_loops): the model FLOPs of one step with that many loops; peak_of(): one device's peak FLOP/s
    (either None: unknown). Both are called only when rates are asked for, outside the timed interval."""
    self.flops_of, self.peak_of, self.n_devices = flops_of, peak_of, n_devices
    self.restart()

  def restart(self):
    self.start, self.loops = time.perf_counter(), collections.Counter()

  def count(self, n_loops: int):
    self.loops[n_loops] += 1

  def rates(self, batch_shape: tuple[int, int]) -> dict:
    """{examples_per_second, tokens_per_second, mfu (None when unknown)} of the steps counted since the last
    restart ({} when none); batch_shape: (examples, positions) of a step's batch."""
    steps, seconds = sum(self.loops.values()), time.perf_counter() - self.start
    if not steps or seconds <= 0:
      return {}
    flops, peak = [self.flops_of(r) for r in self.loops], self.peak_of()
    mfu = None
    if peak and all(flops):
      mfu = sum(f * n for f, n in zip(flops, self.loops.values())) / seconds / (peak * self.n_devices)
    return {"examples_per_second": batch_shape[0] * steps / seconds,
            "tokens_per_second": batch_shape[0] * batch_shape[1] * steps / seconds, "mfu": mfu}
