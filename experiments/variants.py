"""The model kinds compared on depth extrapolation (issue 13): each trainable kind at matched unrolled depth and
matched step budget, plus training-free looping of the vanilla model after training.

    make experiment NAME=variants                  # cpu preset (default; 590–740 s per seed on 2 cores, 2026-12-02)
    make experiment NAME=variants PRESET=smoke     # about 1.5 minutes, used by the tests
    make experiment NAME=variants ARGS="models.hyperloop.model=kind=hyperloop,n_prelude=1,n_coda=1,n_streams=4"

The task, curriculum, evaluation splits, sweeps and halting are those of `depth_extrap`; each entry of `models`
names its kind and sizes in `model` (changes to the shared model config). After training, every
`training_free` spec (";"-separated, as `python -m looprec analyze RUN --training-free SPEC`) is applied to the
trained model it names and analyzed like the others (`python -m looprec analyze RUN` does the same:
`analysis_models`). report.md holds one table with a row per variant
(parameters, steps/s, accuracy on the trained hops and on k+1..k+3 at the R chosen on validation beside the
oracle, and under halting) and a table per variant (accuracy per hop at the validation-chosen R and under each
halting policy); accuracy_hop_by_loops.png the heatmaps.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from experiments import depth_extrap
from looprec import analysis, data, experiment, halting, models, plots, report as md, runs, selection, sharding, tasks
from looprec.config import ModelRun
from looprec.models import count_params, params_checksum

HALTING = ("kl_entropy", "gate")  # the policies the summary table shows (gate: models with an exit gate)


@dataclasses.dataclass(frozen=True)
class Config(depth_extrap.Config):
  training_free: str = ""  # ";"-separated --training-free specs, each with model=NAME of a trained model


def smoke() -> Config:
  """Every kind for a few steps on a tiny graph, and both training-free specs: exercises the whole path."""
  base = depth_extrap.smoke()
  return Config(
      reasons=depth_extrap.TINY,
      data=base.data, model=base.model, eval=dataclasses.replace(base.eval, max_loops=6),
      train=dataclasses.replace(base.train, steps=40, eval_every=20, checkpoint_every=40),
      models={"looped": ModelRun(n_layers=1, recurrence="dynamic:2,2,3"),
              "prelude_core_coda": ModelRun(n_layers=1, recurrence="dynamic:2,1,2",
                                            model="kind=prelude_core_coda,n_prelude=1,n_coda=1"),
              "hyperloop": ModelRun(n_layers=1, recurrence="dynamic:2,1,2",
                                    model="kind=hyperloop,n_prelude=1,n_coda=1,n_streams=2,gate_sets=2"),
              "exit_gate": ModelRun(n_layers=1, recurrence="dynamic:2,2,3", model="kind=exit_gate,exit_beta=0.1"),
              "vanilla": ModelRun(n_layers=3, recurrence="fixed:1")},
      training_free="model=vanilla,window=1:2,substeps=3,damping=0.5;model=vanilla,window=1:2,substeps=1")


def cpu() -> Config:
  """depth_extrap's cpu task and shared model (d = 64, NoPE, 2-token window, injection), five kinds of unrolled
  depth up to 4 layers, 10,000 steps each; training-free looping of the vanilla model's middle half."""
  base = depth_extrap.cpu()
  return Config(
      reasons={**depth_extrap.CPU_REASONS, **depth_extrap.CPU_TASK_REASONS, **experiment.because(
          "The kinds compared, each trained 10,000 steps (the same budget) with unrolled depth at most 4 layers: "
          "looped and exit_gate 1 layer x R in [2, 4]; prelude_core_coda and hyperloop 1 + 1 x R + 1 layers with R "
          "in [1, 2]; vanilla 4 layers.", "models.exit_gate", "models.hyperloop", "models.prelude_core_coda",
          "train.steps"), **experiment.because(
          "Training-free looping of the trained vanilla model's middle half, the experiment's last comparison.",
          "training_free")},
      data=base.data, model=base.model, eval=base.eval,
      train=dataclasses.replace(base.train, steps=10000),
      models={"looped": ModelRun(n_layers=1, recurrence="dynamic:4,2,4"),
              "prelude_core_coda": ModelRun(n_layers=1, recurrence="dynamic:4,1,2",
                                            model="kind=prelude_core_coda,n_prelude=1,n_coda=1"),
              "hyperloop": ModelRun(n_layers=1, recurrence="dynamic:4,1,2",
                                    model="kind=hyperloop,n_prelude=1,n_coda=1,n_streams=2,gate_sets=2"),
              "exit_gate": ModelRun(n_layers=1, recurrence="dynamic:4,2,4", model="kind=exit_gate,exit_beta=0.1"),
              "vanilla": ModelRun(n_layers=4, recurrence="fixed:1")},
      training_free="model=vanilla,window=1:3,substeps=6,damping=0.5;model=vanilla,window=1:3,substeps=1")


PRESETS = {"smoke": smoke, "cpu": cpu}
PAPER = depth_extrap.paper  # the paper preset these presets' deviations are computed against
DEFAULT_PRESET = "cpu"


eval_splits = depth_extrap.eval_splits


def training_free_specs(cfg: Config) -> list[str]:
  return [spec for spec in cfg.training_free.split(";") if spec]


def training_free_entries(cfg: Config) -> list[tuple]:
  """(name, spec, the trained model it wraps, its training-free model config) of every training-free spec."""
  model_cfgs = {name: cfg.model_cfg(name) for name in cfg.models}
  return [(f"{base} training-free {tf_cfg.window} K={tf_cfg.substeps} b={tf_cfg.damping:g}", spec, base, tf_cfg)
          for spec in training_free_specs(cfg)
          for base, tf_cfg in analysis.training_free_configs(model_cfgs, spec).items()]


def analysis_models(cfg: Config) -> dict:
  """The contract's `analysis_models`: every trained model, then every training-free wrapper of one."""
  return {**experiment.trained_models(cfg),
          **{name: (tf_cfg, base) for name, _, base, tf_cfg in training_free_entries(cfg)}}


def validate(cfg: Config):
  """depth_extrap's checks, and every training-free spec fits the trained model it names."""
  depth_extrap.validate(cfg)
  training_free_entries(cfg)


def run(cfg: Config, run_dir: str) -> dict:
  """Trains and analyzes every model, then the training-free wrappers of the trained ones; returns the `models`,
  `halting` and `margins` parts of results.json and writes report.md, the heatmaps and `analysis.write`'s files."""
  mesh = sharding.make_mesh(cfg.train.fsdp)
  task = tasks.make_task(cfg.data)
  splits = eval_splits(task, cfg.eval.max_hop)
  def analyze(name, model, params):
    with runs.stage(f"{name}: sweep over R = 1..{cfg.eval.max_loops}, halting, margins"):
      return analysis.analyze_model(model, params, splits, cfg.eval.max_loops, mesh=mesh,
                                    batch_size=cfg.eval.batch_size)
  results, analyses, trained = {}, {}, {}
  for name, model, result in experiment.train_models(cfg, task, mesh, run_dir):
    trained[name] = result.params
    analyses[name] = analyze(name, model, result.params)
    results[name] = {"kind": model.cfg.kind, "model": cfg.models[name].model, "n_layers": cfg.models[name].n_layers,
                     "train_loops": cfg.models[name].recurrence, "trained_max_hop": result.trained_max_hop,
                     "steps": result.steps, "n_params": count_params(result.params),
                     "params_sum": params_checksum(result.params), "train_seconds": result.wall_seconds,
                     "steps_per_second": result.steps / max(result.wall_seconds, 1e-9), "stages": result.stages,
                     "accuracy": depth_extrap.sweep_accuracy(analyses[name], cfg.eval.max_loops)}
  for name, spec, base, tf_cfg in training_free_entries(cfg):
    analyses[name] = analyze(name, models.build(tf_cfg.for_eval(), task.vocab.size), trained[base])
    results[name] = {**{k: results[base][k] for k in ("n_layers", "trained_max_hop", "n_params", "params_sum")},
                     "kind": "training_free", "model": spec, "train_loops": f"trained as {base}", "steps": 0,
                     "accuracy": depth_extrap.sweep_accuracy(analyses[name], cfg.eval.max_loops)}
  if jax.process_index() == 0:
    hops = {n: r["trained_max_hop"] for n, r in results.items()}
    with runs.stage("figures and reports"):
      plots.heatmaps({n: r["accuracy"] for n, r in results.items()},
                     os.path.join(run_dir, "accuracy_hop_by_loops.png"), hops)
      md.write(os.path.join(run_dir, "report.md"),
               report(cfg, results, analyses, {s: len(ex["target"]) for s, ex in splits.items()}))
      analysis.write(run_dir, analyses, hops, {n: r["kind"] for n, r in results.items()})
  return {"models": results, **depth_extrap.halting_and_margins(analyses)}


def _halting_rows(model_analysis: dict) -> dict:
  """policy name -> its halting table (split -> row), for the policies of HALTING the model was analyzed with."""
  by_name = {spec.partition(":")[0]: table for spec, table in model_analysis["halting"].items()}
  return {name: by_name[name] for name in HALTING if name in by_name}


def report(cfg: Config, results: dict, analyses: dict, sizes: dict) -> str:
  """One summary table (a row per variant) and one table per variant (a row per hop, with its examples: sizes,
  split -> n; too small ones flagged)."""
  split = data.split_name
  pick = lambda acc, hop: selection.select(acc, split(hop))
  k = cfg.data.curriculum.last_hop
  hops = sorted({data.hop_of(s) for r in results.values() for s in r["accuracy"]})
  beyond = [hop for hop in range(k + 1, k + 4) if hop in hops]
  lines = ["# Model kinds on depth extrapolation", "",
           f"Held-out chains; trained on at most k = {k} hops (the curriculum's last stage). Per hop: the test "
           f"accuracy at the R chosen on the validation split (argmax over R = 1..{cfg.eval.max_loops}, ties to the "
           "smallest R), and in brackets the oracle, the best test accuracy over R (an upper bound). Trained hops: "
           "the mean over hops 1..k of the test accuracy at the chosen R. Halting: accuracy / mean loops over the "
           "k+1..k+3 splits (cap "
           f"{halting.DEFAULT_CAP}); kl_entropy is the paper's rule, gate the exit gate's CDF > 0.5. steps/s: "
           "training steps per second of training wall time (periodic evaluations included).", "",
           "| model | kind | params | steps/s | trained hops | " + " | ".join(f"{h} hops" for h in beyond)
           + " | " + " | ".join(f"halting {p}" for p in HALTING) + " |", "|---" * (5 + len(beyond) + len(HALTING)) + "|"]
  for name, r in results.items():
    acc = r["accuracy"]
    trained = np.mean([pick(acc, h)["test"] for h in range(1, k + 1) if split(h) in acc])
    cells = [name, r["kind"], f"{r['n_params']:,}", f"{r['steps_per_second']:.1f}" if r["steps"] else "—",
             f"{trained:.2f} (k reached {r['trained_max_hop']})"]
    cells += [selection.text(pick(acc, h)) for h in beyond]
    rows = _halting_rows(analyses[name])
    for pol in HALTING:
      if pol in rows:
        picked = [rows[pol][split(h)] for h in beyond]
        cells.append(f"{np.mean([p['accuracy'] for p in picked]):.2f} / "
                     f"{np.mean([p['mean_loops'] for p in picked]):.1f}")
      else:
        cells.append("—")
    lines.append("| " + " | ".join(cells) + " |")
  lines += md.small_note(sizes)
  lines += ["", "Heatmaps of accuracy per (hop, R): `accuracy_hop_by_loops.png`; every policy per split: "
            "`halting.md`; overthinking margins: `margins.png`.", ""]
  for name, r in results.items():
    rows = _halting_rows(analyses[name])
    lines += [f"## {name}", "", f"kind {r['kind']} ({r['model'] or 'the shared model config'}), "
              f"{r['n_layers']} looped layer(s), R {r['train_loops']}"
              + (f", {r['steps']} steps in {r['train_seconds']:.0f} s, curriculum stages {r['stages']}"
                 if r["steps"] else "") + ".", "",
              "| hop | n test / val | test at the validation-chosen R [oracle] | "
              + " | ".join(f"{p} (accuracy, mean loops)" for p in rows) + " |",
              "|---" * (3 + len(rows)) + "|"]
    for hop in hops:
      cells = [f"{md.examples(sizes.get(split(hop)))} / {md.examples(sizes.get(selection.val_split(split(hop))))}",
               selection.text(pick(r["accuracy"], hop)) + (" *" if hop <= r["trained_max_hop"] else "")]
      cells += [f"{rows[p][split(hop)]['accuracy']:.2f}, {rows[p][split(hop)]['mean_loops']:.1f}" for p in rows]
      lines.append(f"| {hop} | " + " | ".join(cells) + " |")
    lines.append("")
  lines += ["`*` hops the model trained on.", "", "## Deviations from the paper's recipe", "",
            experiment.deviations_text(cfg, PAPER()), ""]
  return "\n".join(lines)
