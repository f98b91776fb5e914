"""looprec's train step under XLA CPU flags, side by side: each flag set runs in its own process (XLA reads
XLA_FLAGS once, when the backend starts), rounds alternating between the flag sets in alternating order.

    .venv/bin/python benchmarks/xla_flags.py [--shapes tiny,cpu] [--rounds 3] [--flags default,no_xnnpack,...]

Each process builds looprec's default step (`vs_pytorch.looprec_step`: forward, backward, AdamW, float32) from
the same init and batch, runs --check-steps steps and saves the params, then times --steps more. Each row prints
the median ms per step over the rounds, its speed against the default flags, and the largest parameter
difference from the default flags' params after --check-steps steps (0: bitwise the default step).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

# name -> XLA_FLAGS; the first is XLA's defaults.
FLAGS = {
    "default": "",
    "region_analysis": "--xla_cpu_copy_insertion_use_region_analysis=true",
    "scheduler=concurrency": "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED",
    "opt_preset=fast_runtime": "--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME",
    "vector_width=512": "--xla_cpu_prefer_vector_width=512",
    "eigen_one_thread": "--xla_cpu_multi_thread_eigen=false",
    "no_xnnpack": "--xla_cpu_use_xnnpack=false",
    "xnn_fusion=dot": "--xla_cpu_experimental_xnn_fusion_type=dot",
    "ynn_fusion=dot": "--xla_cpu_experimental_ynn_fusion_type=dot",
    "xnn_graph=greedy": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "onednn": "--xla_cpu_use_onednn=true",
}


def once(args) -> dict:
  """One process's figures: {"ms": [per-step ms of each block], "compile_s": s}; the params go to args.params."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  import vs_pytorch  # pylint: disable=import-outside-toplevel
  from looprec.config import TrainConfig  # pylint: disable=import-outside-toplevel
  shape = vs_pytorch.SHAPES[args.shape]
  batch = vs_pytorch.make_batch(np.random.default_rng(0), shape[4], shape[5], shape[6])
  run, _ = vs_pytorch.looprec_step(shape, TrainConfig(), batch, "looprec")
  start = time.perf_counter()
  run(1)
  compile_s = time.perf_counter() - start
  params = jax.device_get(run(args.check_steps - 1))
  np.savez(args.params, *jax.tree_util.tree_leaves(params))
  ms = []
  for _ in range(args.blocks):
    start = time.perf_counter()
    run(args.steps)
    ms.append((time.perf_counter() - start) / args.steps * 1e3)
  return {"ms": ms, "compile_s": compile_s}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--shapes", default="tiny,cpu", help="comma-separated, from benchmarks/vs_pytorch.py's SHAPES")
  ap.add_argument("--flags", default=",".join(FLAGS), help=f"comma-separated, from {', '.join(FLAGS)}")
  ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (each: one process per flag set)")
  ap.add_argument("--check-steps", type=int, default=10, help="steps before the params are compared")
  ap.add_argument("--steps", type=int, default=0, help="steps per timed block (0: 50 at tiny, else 2)")
  ap.add_argument("--blocks", type=int, default=3, help="timed blocks per process")
  ap.add_argument("--out", default=None, help="also write every round's figures here as JSON")
  ap.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--shape", help=argparse.SUPPRESS)
  ap.add_argument("--params", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.once:
    print(json.dumps(once(args)))
    return
  names = ["default"] + [f for f in args.flags.split(",") if f != "default"]
  unknown = [f for f in names if f not in FLAGS]
  if unknown:
    print(f"error: unknown flag set {unknown[0]!r} (choose from {', '.join(FLAGS)})", file=sys.stderr)
    sys.exit(2)
  import numpy as np  # pylint: disable=import-outside-toplevel
  here = os.path.dirname(os.path.abspath(__file__))
  print(f"{len(os.sched_getaffinity(0))} CPUs, load average {os.getloadavg()[0]:.1f} at start", flush=True)
  found = {}
  with tempfile.TemporaryDirectory() as tmp:
    for shape in args.shapes.split(","):
      steps = args.steps or (50 if shape == "tiny" else 2)
      rounds = {f: [] for f in names}
      for i in range(args.rounds):
        for f in names[::1 if i % 2 == 0 else -1]:
          path = os.path.join(tmp, f"{shape}-{names.index(f)}.npz")
          cmd = [sys.executable, os.path.join(here, "xla_flags.py"), "--once", "--shape", shape, "--params", path,
                 "--check-steps", str(args.check_steps), "--steps", str(steps), "--blocks", str(args.blocks)]
          out = subprocess.run(cmd, env={**os.environ, "XLA_FLAGS": FLAGS[f]}, capture_output=True, text=True,
                               check=True)
          rounds[f].append(json.loads(out.stdout.splitlines()[-1]))
      base = np.load(os.path.join(tmp, f"{shape}-0.npz"))
      ref = statistics.median(m for r in rounds["default"] for m in r["ms"])
      print(f"{shape} (median ms/step over {args.rounds} rounds x {args.blocks} blocks of {steps} steps; "
            f"speed = default / row):")
      for f in names:
        other = np.load(os.path.join(tmp, f"{shape}-{names.index(f)}.npz"))
        diff = max(float(np.max(np.abs(base[k] - other[k]))) for k in base.files)
        ms = statistics.median(m for r in rounds[f] for m in r["ms"])
        compile_s = statistics.median(r["compile_s"] for r in rounds[f])
        print(f"  {f:<24} {ms:8.2f} ms  {ref / ms:5.2f}x  first step {compile_s:5.1f} s  "
              f"params after {args.check_steps} steps differ by {diff:.1e}", flush=True)
      found[shape] = rounds
  print(f"load average {os.getloadavg()[0]:.1f} at the end")
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump({"args": vars(args), "flags": FLAGS, "rounds": found}, f, indent=1)


if __name__ == "__main__":
  main()
