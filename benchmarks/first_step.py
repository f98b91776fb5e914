"""Time to the first training step of an experiment preset, and until every R of the recurrence schedule has been
met, broken down by phase, for each way of compiling the step; each variant in a fresh process.

    .venv/bin/python benchmarks/first_step.py [--preset paper] [--until first|all_r] [--variants ...] [key=value ...]

Variants: train.loop_programs=per_r | one | ahead with an empty persistent compilation cache ($LOOPREC_CACHE, a
temporary folder), and `<variant>_warm`, a second identical run over the cache its cold run filled. Each runs
`python -m looprec experiment` (the CLI's own entry point) until the first model's first step is done (--until
first) or until it has run a step at every R of its schedule (--until all_r), then exits. Every step is waited for
(block_until_ready), so its compile (or the wait for its program) and its run are timed apart. Ratios are against
the first variant (per_r cold by default); with --rounds N the variants run N times in turn and the table shows each
phase's fastest time (the machine's noise only ever adds).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

VARIANTS = ("per_r", "per_r_warm", "one", "one_warm", "ahead", "ahead_warm")
PHASES = ("python and imports", "task", "evaluation splits", "init", "other setup", "first step: compile",
          "first step: run")


def parse():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--experiment", default="depth_extrap")
  parser.add_argument("--preset", default="paper")
  parser.add_argument("--until", choices=("first", "all_r"), default="first")
  parser.add_argument("--variants", default="per_r,per_r_warm,one,ahead,ahead_warm")
  parser.add_argument("--rounds", type=int, default=1, help="each variant this many times, interleaved; the "
                      "table shows the fastest")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args, overrides = parser.parse_known_args()
  args.variants = args.variants.split(",")
  for i, v in enumerate(args.variants):
    if v not in VARIANTS or v in args.variants[:i]:
      parser.error(f"variant {v!r} is unknown or repeated (have {', '.join(VARIANTS)})")
    if v.endswith("_warm") and v.removesuffix("_warm") not in args.variants[:i]:
      parser.error(f"variant {v!r} needs its cold run {v.removesuffix('_warm')!r} before it")
  return args, overrides


def child(args, overrides):
  """Runs the CLI with its phases timed (seconds since the parent started this process); prints them as JSON."""
  t0 = float(os.environ["FIRST_STEP_T0"])
  import jax  # pylint: disable=import-outside-toplevel
  from looprec import cli, data, experiment, train  # pylint: disable=import-outside-toplevel
  module = experiment.load(args.experiment)
  events, steps, wanted = {"imports": time.time() - t0}, [], set()

  def timed(owner, name, label):
    fn = getattr(owner, name)

    def wrapper(*a, **k):
      events.setdefault(label + " start", time.time() - t0)
      out = jax.block_until_ready(fn(*a, **k))
      events.setdefault(label + " end", time.time() - t0)
      return out
    setattr(owner, name, wrapper)

  timed(data, "make_task", "task")
  if hasattr(module, "eval_splits"):
    timed(module, "eval_splits", "evaluation splits")
  timed(train, "init_state", "init")
  train_model = train.train_model

  def train_first(name, model, rec, *a, **k):
    wanted.update(range(rec.min_loops, rec.max_loops + 1))
    return train_model(name, model, rec, *a, **k)

  train.train_model = train_first
  run_step = train.Programs.step

  def step(self, state, batch, n_loops):
    called = time.time() - t0
    out = run_step(self, state, batch, n_loops)
    dispatched = time.time() - t0
    jax.block_until_ready(out)
    steps.append({"loops": n_loops, "called": called, "dispatched": dispatched, "done": time.time() - t0})
    if args.until == "first" or wanted <= {s["loops"] for s in steps}:
      print(json.dumps({"events": events, "steps": steps}), flush=True)
      os._exit(0)  # pylint: disable=protected-access  (stop here: no checkpoint, no analysis)
    return out

  train.Programs.step = step
  with tempfile.TemporaryDirectory() as runs:
    cli.main(["experiment", args.experiment, "--preset", args.preset, "--runs-dir", runs, *overrides])
  raise SystemExit("error: training ended before the timed steps")


def measure(args, overrides, variant: str, cache: str) -> dict:
  loop_programs = variant.removesuffix("_warm")
  cmd = [sys.executable, __file__, "--child", "--experiment", args.experiment, "--preset", args.preset, "--until",
         args.until, *overrides, f"train.loop_programs={loop_programs}"]
  env = {**os.environ, "LOOPREC_CACHE": cache, "FIRST_STEP_T0": repr(time.time())}
  out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
  if out.returncode:
    raise SystemExit(f"error: variant {variant} failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def phases(run: dict) -> dict:
  """Seconds per phase before and in the first step, and the totals."""
  e, first, last = run["events"], run["steps"][0], run["steps"][-1]
  p = {"python and imports": e["imports"], "task": e["task end"] - e["task start"],
       "evaluation splits": e.get("evaluation splits end", 0.0) - e.get("evaluation splits start", 0.0),
       "init": e["init end"] - e["init start"], "first step: compile": first["dispatched"] - first["called"],
       "first step: run": first["done"] - first["dispatched"]}
  p["other setup"] = first["called"] - sum(v for k, v in p.items() if not k.startswith("first step"))
  p["ready to step"] = first["dispatched"]
  p["first step done"] = first["done"]
  p["last step done"] = last["done"]
  p["steps"] = len(run["steps"])
  p["compile waits, all steps"] = sum(s["dispatched"] - s["called"] for s in run["steps"])
  p["runs, all steps"] = sum(s["done"] - s["dispatched"] for s in run["steps"])
  return p


def main():
  args, overrides = parse()
  if args.child:
    child(args, overrides)
    return
  print(f"{args.experiment} --preset {args.preset} {' '.join(overrides)}, until {args.until}, {args.rounds} rounds, "
        f"load average {os.getloadavg()[0]:.1f}", flush=True)
  rounds = {v: [] for v in args.variants}
  for i in range(args.rounds):
    with tempfile.TemporaryDirectory() as caches:
      for variant in args.variants:
        cache = os.path.join(caches, variant.removesuffix("_warm"))
        rounds[variant].append(phases(measure(args, overrides, variant, cache)))
        print(f"  round {i + 1}: {variant} done, load average {os.getloadavg()[0]:.1f}", flush=True)
  best = {v: {k: min(r[k] for r in runs) for k in runs[0]} for v, runs in rounds.items()}
  base = best[args.variants[0]]
  totals = ("ready to step", "first step done") + (("last step done",) if args.until == "all_r" else ())
  rows = list(PHASES) + list(totals[:2]) + (["steps", "compile waits, all steps", "runs, all steps", totals[2]]
                                            if args.until == "all_r" else [])
  print(f"{f'seconds, fastest of {args.rounds}':>32} | " + " | ".join(f"{v:>10}" for v in args.variants))
  for row in rows:
    print(f"{row:>32} | " + " | ".join(f"{best[v][row]:10.1f}" for v in args.variants))
  for row in totals:
    print(f"{row + ', ratio':>32} | " + " | ".join(f"{base[row] / best[v][row]:9.2f}x" for v in args.variants))
  for row in totals:
    print(f"{row + ', each round':>32} | " + " | ".join(f"{'/'.join(f'{r[row]:.0f}' for r in rounds[v]):>10}"
                                                     for v in args.variants))
  print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
