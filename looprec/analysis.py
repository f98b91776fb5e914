"""Inference-time depth of trained models: accuracy for every loop count (one compile), adaptive halting that
really stops, overthinking margins; `analysis.json` and figures in the run folder (`python -m looprec analyze`).
"""
from __future__ import annotations

import os

import jax
import numpy as np

from looprec import eval as evaluation, experiment, halting, plots, report, runs, sharding
from looprec import config as C
from looprec import models
from looprec.eval import sweep  # the accuracy[split][R] sweep, part of this module's API
from looprec.halting import answer_set_size, halt_examples  # part of this module's API
from looprec.models import training_free

MARGIN_LOOPS = 50


def _check_loops(value: int, what: str):
  if value < 1:
    raise C.ConfigError(f"{what}={value} must be >= 1")


def halt(model, params, splits: dict, policy="kl_entropy", max_loops: int = halting.DEFAULT_CAP, mesh=None,
         batch_size: int = 256, fixed: dict | None = None) -> dict:
  """Adaptive halting per split: accuracy and mean / median / max loops, beside the best fixed R and R = cap.

  policy: a halting.Policy or a spec `name[:key=value,...]` (names: halting.RULES). fixed: a sweep covering
  R = 1..max_loops to reuse.

      table = halt(model, params, splits, "kl_entropy:eps=1e-3,max_entropy=3", max_loops=16)
      table["5hop_test"]["accuracy"], table["5hop_test"]["mean_loops"], table["5hop_test"]["best_fixed"]
  """
  pol = policy if isinstance(policy, halting.Policy) else halting.parse_policy(policy)
  _check_loops(max_loops, "max_loops")
  mesh = mesh or sharding.make_mesh()
  if fixed is None or any(str(max_loops) not in fixed[s] for s in splits):
    fixed = sweep(model, params, splits, max_loops, mesh, batch_size)
  table = {}
  for name, examples in splits.items():
    got = halt_examples(model, params, examples, pol, max_loops, mesh, batch_size)
    by_r = {r: fixed[name][str(r)] for r in range(1, max_loops + 1)}
    best = min(by_r, key=lambda r: (-by_r[r], r))
    correct_N = models.answer_correct(got["answer"], examples["target"])
    table[name] = {"policy": str(pol), "examples": len(examples["target"]), "accuracy": float(np.mean(correct_N)),
                   "mean_loops": float(got["loops"].mean()), "median_loops": float(np.median(got["loops"])),
                   "max_loops": int(got["loops"].max()), "executed_loops": float(got["executed"].mean()),
                   "best_fixed": {"loops": best, "accuracy": by_r[best]},
                   "fixed_max": {"loops": max_loops, "accuracy": by_r[max_loops]}}
  return table


def summarize_margins(margin_RxN, hit_RxN) -> dict:
  """The mean margin per loop, t_star (mean first hit over examples that ever hit; None if none), the fraction
  that ever hit, and peak_loop (1-based loop of the largest mean margin)."""
  ever_N = hit_RxN.any(0)
  first_N = hit_RxN.argmax(0) + 1
  curve_R = margin_RxN.mean(1)
  return {"margin": [float(x) for x in curve_R], "t_star": float(first_N[ever_N].mean()) if ever_N.any() else None,
          "hit_fraction": float(ever_N.mean()), "peak_loop": int(curve_R.argmax()) + 1}


def margins(model, params, splits: dict, n_loops: int = MARGIN_LOOPS, mesh=None, batch_size: int = 256) -> dict:
  """Overthinking per split: mean logit margin (target logit - best other logit) after each loop t = 1..n_loops,
  `t_star` (mean first loop whose argmax is the answer, over examples that ever hit; None if none),
  `hit_fraction` (examples that ever hit) and `peak_loop` (the loop of the largest mean margin).

      m = margins(model, params, splits, n_loops=50)
      m["4hop_test"]["margin"][9], m["4hop_test"]["t_star"], m["4hop_test"]["peak_loop"]
  """
  _check_loops(n_loops, "margin_loops")
  mesh = mesh or sharding.make_mesh()
  return {name: summarize_margins(*evaluation.per_loop(model, params, examples, n_loops, mesh, batch_size))
          for name, examples in splits.items()}


def analyze_model(model, params, splits: dict, max_loops: int, policies=None,
                  halt_loops: int = halting.DEFAULT_CAP, margin_loops: int = MARGIN_LOOPS, mesh=None,
                  batch_size: int = 256) -> dict:
  """{"sweep": accuracy[split][R] for R = 1..max(max_loops, halt_loops), "halting": policy -> split -> row,
  "margins": split -> curve} for one model. The sweep and the margins come from one scan per batch (one
  compile), the halting of every policy from one compiled while_loop. policies: default every policy that
  applies to the model (`halting.applicable`); a given policy that does not apply is skipped (`halting.applies`)."""
  mesh = mesh or sharding.make_mesh()
  pols = [p if isinstance(p, halting.Policy) else halting.parse_policy(p)
          for p in (policies or halting.applicable(model))]
  pols = [p for p in pols if halting.applies(p.name, model)]
  sweep_loops = max(max_loops, halt_loops)
  acc, curves = {}, {}
  for name, examples in splits.items():
    margin_RxN, hit_RxN = evaluation.per_loop(model, params, examples, max(sweep_loops, margin_loops), mesh,
                                              batch_size)
    acc[name] = {str(r + 1): float(a) for r, a in enumerate(hit_RxN[:sweep_loops].mean(1))}
    curves[name] = summarize_margins(margin_RxN[:margin_loops], hit_RxN[:margin_loops])
  return {"sweep": acc,
          "halting": {str(p): halt(model, params, splits, p, halt_loops, mesh, batch_size, fixed=acc) for p in pols},
          "margins": curves}


def write(run_dir: str, analyses: dict, trained_hops: dict | None = None, kinds: dict | None = None):
  """analysis.json ({"models": model -> analyze_model's dict}), analysis_accuracy_hop_by_loops.png, margins.png
  and halting.md (kinds: model -> its model.kind, named beside it) in run_dir."""
  runs.write_json(os.path.join(run_dir, "analysis.json"), {"models": analyses})
  plots.heatmaps({n: a["sweep"] for n, a in analyses.items()},
                 os.path.join(run_dir, "analysis_accuracy_hop_by_loops.png"), trained_hops)
  plots.margin_curves({n: a["margins"] for n, a in analyses.items()}, os.path.join(run_dir, "margins.png"))
  report.write(os.path.join(run_dir, "halting.md"), report.halting(analyses, kinds))


def training_free_configs(model_cfgs: dict, spec: str) -> dict:
  """name -> the training-free config (`models.training_free.wrap`) of each model whose layers hold the window of
  spec ("window=a:b,substeps=K,damping=b[,model=NAME]"); ConfigError if none does or NAME is not a model."""
  items = [i for i in spec.split(",") if i]
  chosen = [i.partition("=")[2] for i in items if i.startswith("model=")]
  spec = ",".join(i for i in items if not i.startswith("model="))
  for name in chosen:
    if name not in model_cfgs:
      raise C.ConfigError(f"--training-free model={name!r} is not a model of the run (have {C.choices(name, model_cfgs)})")
  out, errors = {}, []
  for name, cfg in model_cfgs.items():
    if chosen and name not in chosen:
      continue
    try:
      out[name] = training_free.wrap(cfg, spec)
    except C.ConfigError as e:
      if chosen:
        raise C.ConfigError(f"--training-free model={name}: {e}") from None
      errors.append(f"{name}: {e}")
  if not out:
    raise C.ConfigError(f"--training-free {spec!r} fits no model of the run ({'; '.join(errors)})")
  return out


def analyze(run_dir: str, max_loops: int | None = None, policies=None, halt_loops: int = halting.DEFAULT_CAP,
            margin_loops: int = MARGIN_LOOPS, training_free_spec: str | None = None) -> str:
  """Analyzes the final checkpoints of a run folder as its experiment's contract (`experiment.Experiment`) says:
  its own `analyze_run` where it has one (systematicity: sweep and logit lens; it gets only max_loops), else every
  model of its `analysis_models` on its `eval_splits` (`analyze_model`), written by `write` into run_dir; returns
  the analysis.json path. Bad input raises ConfigError before any work; a ConfigError during it is an
  `experiment.Bug`.

  training_free_spec ("window=a:b,substeps=K,damping=b[,model=NAME]"): analyze instead the trained models with
  that window looped at inference (`models.training_free`), into run_dir/training_free/<spec>/."""
  pols = [halting.parse_policy(p) for p in policies] if policies else None
  for value, what in ((max_loops, "max_loops"), (halt_loops, "halt_loops"), (margin_loops, "margin_loops")):
    if value is not None:
      _check_loops(value, what)
  run = experiment.load_run(run_dir)
  cfg, module = run.cfg, run.module
  out_dir, own = run_dir, experiment.member(module, "analyze_run")
  if training_free_spec is not None:
    wrapped = training_free_configs({name: cfg.model_cfg(name) for name in cfg.models}, training_free_spec)
    entries = {name: (tf_cfg, name) for name, tf_cfg in wrapped.items()}
    out_dir = os.path.join(run_dir, "training_free", training_free_spec.replace("=", "").replace(",", "_")
                           .replace(":", "-"))
  elif own:
    with experiment.inputs_checked():
      return own(cfg, run_dir, {n: (run.params[n], run.meta[n]) for n in cfg.models}, max_loops)
  else:
    entries = experiment.member(module, "analysis_models")(cfg)
  task = run.task
  splits = module.eval_splits(task, cfg.eval.max_hop)
  max_loops = cfg.eval.max_loops if max_loops is None else max_loops
  mesh = sharding.loading_mesh(cfg.train.fsdp)  # the mesh load_run laid the params out on
  built = {name: models.build(model_cfg.for_eval(), task.vocab.size) for name, (model_cfg, _) in entries.items()}
  if pols and not any(halting.applies(p.name, m) for p in pols for m in built.values()):
    raise C.ConfigError(f"halting policy {', '.join(map(str, pols))} applies to no model of the run ('gate' needs a "
                        "model with an exit gate, model.kind=exit_gate)")
  with experiment.inputs_checked():
    analyses = {}
    for name, model in built.items():
      with runs.stage(f"{name}: sweep over R = 1..{max_loops}, halting, margins"):
        analyses[name] = analyze_model(model, run.params[entries[name][1]], splits, max_loops, pols, halt_loops,
                                       margin_loops, mesh, cfg.eval.batch_size)
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    with runs.stage("figures and halting.md"):
      write(out_dir, analyses, {name: run.meta[trained]["stage"] for name, (_, trained) in entries.items()},
            {name: model_cfg.kind or next(iter(C.KINDS)) for name, (model_cfg, _) in entries.items()})
  return os.path.join(out_dir, "analysis.json")
