"""Depth extrapolation (RECIPE task B): train on chains of up to k hops, answer deeper chains by looping longer.

    make experiment NAME=depth_extrap                  # cpu preset (default)
    make experiment NAME=depth_extrap PRESET=smoke     # <= 2 minutes, used by the tests
    make experiment NAME=depth_extrap PRESET=paper     # the official recipe (GPU/TPU)
    make experiment NAME=depth_extrap ARGS="train.steps=500 model.d_model=64"

Trains each entry of `models` (a looped model with dynamic recurrence and the hop curriculum, and baselines),
then evaluates accuracy[hop, R] on held-out chains of hops 1..eval.max_hop for R = 1..eval.max_loops, and
analyzes inference-time depth (adaptive halting, overthinking margins; `looprec/analysis.py`).
"""
from __future__ import annotations

import dataclasses
import os

import jax

from looprec import config as C
from looprec import analysis, data, experiment, plots, report as md, selection, sharding, tasks
from looprec.config import ChainDataConfig, ConfigError, CurriculumConfig, EvalConfig, ModelConfig, ModelRun, TrainConfig
from looprec.models import count_params, params_checksum


@dataclasses.dataclass(frozen=True)
class Config(experiment.ExperimentConfig):
  data: ChainDataConfig = ChainDataConfig()


def smoke() -> Config:
  """Tiny and fast: exercises every part (curriculum, dynamic R, checkpoints, sweep) in well under 2 minutes."""
  return Config(
      deviations="A tiny test configuration; it is not meant to learn the task.",
      data=ChainDataConfig(n_entities=8, n_relations=2, seq_len=8, n_eval=64, test_fraction=0.2,
                           curriculum=CurriculumConfig(first_hop=2, last_hop=3, threshold=0.5)),
      model=ModelConfig(d_model=32, n_heads=2, n_layers=1, attn_window=3),
      train=TrainConfig(steps=200, batch_size=32, warmup_steps=20, eval_every=50, checkpoint_every=100, log_every=10),
      eval=EvalConfig(max_hop=5, max_loops=8, batch_size=64),
      models={"looped": ModelRun(n_layers=1, recurrence="dynamic:2,1,3"),
              "vanilla": ModelRun(n_layers=2, recurrence="fixed:1", steps=100)})


def cpu() -> Config:
  """The default: a small graph and a one-layer looped block on a 2-core CPU (see docs/reproducing.md)."""
  return Config(
      deviations=("For tiny scale (N=20 entities, M=4 relations, d=64, one layer looped): a 2-token causal "
                  "attention window (each token sees itself and its predecessor, so a k-hop chain must be followed "
                  "one relation per loop; the paper uses full attention; positions are NoPE as in the paper), the "
                  "answer read at the "
                  "last input token (the official pred_pos=inp_len option), input injection, lr 3e-3 with warmup "
                  "200 and gradient clipping 1.0 (paper: 1e-4, 2000, none), batch 64, fp32, a curriculum from 2 to "
                  "4 hops, R = clip(Poisson(4), 2, 4) (paper: clipped to [2, 8]) so that every untrained hop needs "
                  "more loops than training ever ran, and a fixed step budget per model instead of thousands of "
                  "epochs. The vanilla model has 3 layers, the looped model's mean unrolled depth."),
      data=ChainDataConfig(n_entities=20, n_relations=4, seq_len=12, n_eval=256, test_fraction=0.1,
                           curriculum=CurriculumConfig(first_hop=2, last_hop=4, threshold=0.95)),
      model=ModelConfig(d_model=64, n_heads=4, n_layers=1, pos_emb="none", attn_window=2, injection="add"),
      train=TrainConfig(steps=20000, batch_size=64, lr=3e-3, warmup_steps=200, grad_clip=1.0, eval_every=250,
                        checkpoint_every=2000),
      eval=EvalConfig(max_hop=10, max_loops=20),
      models={"looped": ModelRun(n_layers=1, recurrence="dynamic:4,2,4"),
              "vanilla": ModelRun(n_layers=3, recurrence="fixed:1", steps=6000),
              "fixed": ModelRun(n_layers=1, recurrence="fixed:4", steps=10000)})


def cpu_faithful() -> Config:
  """The paper's own attention at CPU size: full causal attention, NoPE, the paper's graph (200 entities, 10
  relations, 15,000 training chains per hop from a fixed pool, the rest of each hop held out), a small model, at
  most 55 minutes of training (see docs/reproducing.md for what it reached)."""
  return Config(
      deviations=("The paper's attention (full causal), positions (NoPE) and graph (N=200, M=10, 15,000 chains per "
                  "hop), scaled down elsewhere: d=128 with 4 heads and a 2-layer block (paper: 768, 12, 4), input "
                  "injection, the answer read at the last input token, lr 1e-3 with warmup 500 and clipping 1.0, "
                  "batch 64, fp32, a curriculum from 2 to 4 hops, R = clip(Poisson(4), 2, 4), 55 minutes of "
                  "training."),
      data=ChainDataConfig(n_entities=200, n_relations=10, seq_len=12, n_eval=256, test_fraction=750 / 15750,
                           train_chains_per_hop=15000, hop_weights="pool",
                           curriculum=CurriculumConfig(first_hop=2, last_hop=4, threshold=0.95)),
      model=ModelConfig(d_model=128, n_heads=4, n_layers=2, pos_emb="none", attn_window=0, injection="add"),
      train=TrainConfig(steps=200_000, max_minutes=55, batch_size=64, lr=1e-3, warmup_steps=500, grad_clip=1.0,
                        eval_every=500, checkpoint_every=5000),
      eval=EvalConfig(max_hop=8, max_loops=16),
      models={"looped": ModelRun(n_layers=2, recurrence="dynamic:4,2,4")})


def paper() -> Config:
  """The official training script's values (docs/reproducing.md, "The official recipe, value by value"): N=200,
  M=10, d=768, 12 heads, L=4, NoPE, zero-init output projections, N(0, 1) embeddings, attention and residual
  dropout 0.1, weight decay on every parameter, a curriculum from 2 to 40 hops checked once per epoch with forced
  grokking, R = clip(Poisson(4), 2, 8) beside fixed R = 6, 7, 8, bf16."""
  return Config(
      deviations=("The official values, except: the training set is streamed (15,000 chains per hop drawn with "
                  "replacement from a fixed pool, atomic facts weighted by their count) rather than shuffled "
                  "epochs of a file, and an epoch is its equivalent in steps; the learning rate stays constant "
                  "after warmup (official: linear decay over 100,001 epochs of the stage's data, at most a few "
                  "percent by the reference checkpoints); the curriculum gate reads the stage's held-out accuracy at "
                  "the largest training R (official, dynamic R: KL/entropy halting capped at 8 loops); a step budget "
                  "replaces the epoch count."),
      data=ChainDataConfig(n_entities=200, n_relations=10, seq_len=50, n_eval=750, test_fraction=750 / 15750,
                           train_chains_per_hop=15000, hop_weights="pool", answer_at="next",
                           curriculum=CurriculumConfig(first_hop=2, last_hop=40, threshold=0.95, check="epoch",
                                                       min_epochs=1001)),
      model=ModelConfig(d_model=768, n_heads=12, n_layers=4, pos_emb="none", attn_window=0, out_init_scale=0.0,
                        out_init_scaled=False, embed_init_std=1.0, ln_eps=1e-5, embed_dropout=0.0,
                        attn_dropout=0.1, resid_dropout=0.1, injection="none", dtype="bfloat16", max_positions=50),
      train=TrainConfig(steps=10_000_000, batch_size=128, lr=1e-4, warmup_steps=2000, weight_decay=0.01,
                        weight_decay_on="all", grad_clip=0.0, label_smoothing=0.0, restart_optimizer=True,
                        eval_every=2000, checkpoint_every=5000),
      eval=EvalConfig(max_hop=40, max_loops=40),
      models={"looped": ModelRun(n_layers=4, recurrence="dynamic:4,2,8"),
              **{f"fixed_r{r}": ModelRun(n_layers=4, recurrence=f"fixed:{r}") for r in (6, 7, 8)}})


PRESETS = {"smoke": smoke, "cpu": cpu, "cpu_faithful": cpu_faithful, "paper": paper}
DEFAULT_PRESET = "cpu"


def validate(cfg: Config):
  """Cross-field checks; raises ConfigError naming the culprit."""
  C.validate_experiment(cfg)
  fits = cfg.data.fitting_hops()
  if cfg.eval.max_hop > fits:
    raise ConfigError(f"eval.max_hop={cfg.eval.max_hop} needs more than data.seq_len={cfg.data.seq_len} allows "
                      f"({fits} hops)")
  sharding.check_batch(cfg.train.batch_size, sharding.make_mesh(cfg.train.fsdp))
  if cfg.model.pos_emb == "learned" and cfg.model.max_positions < cfg.data.seq_len:
    raise ConfigError(f"model.max_positions={cfg.model.max_positions} < data.seq_len={cfg.data.seq_len}")
  if cfg.data.source != "generate":
    eval_splits(tasks.make_task(cfg.data), cfg.eval.max_hop)  # reads and checks the folder before anything is written


def eval_splits(task, max_hop: int) -> dict:
  """The held-out test split of every hop 1..max_hop that the task has, then their validation splits (an empty one,
  possible in a data folder, left out)."""
  hops = range(1, min(max_hop, task.deepest_eval_hop) + 1)
  vals = {selection.val_split(data.split_name(hop)): task.val_split(hop) for hop in hops}
  return {**{data.split_name(hop): task.eval_split(hop) for hop in hops},
          **{name: ex for name, ex in vals.items() if len(ex["target"])}}


def run(cfg: Config, run_dir: str) -> dict:
  """Trains, evaluates and analyzes every model; returns the `models`, `halting` and `margins` parts of
  results.json and writes the plots, report.md and the files of `analysis.write`."""
  mesh = sharding.make_mesh(cfg.train.fsdp)
  task = tasks.make_task(cfg.data)
  results, analyses, splits = {}, {}, {}
  for name, model, result in experiment.train_models(cfg, task, mesh, run_dir):
    splits = splits or eval_splits(task, cfg.eval.max_hop)  # after the first model trains, not before its first step
    mrun = cfg.models[name]
    analyses[name] = analysis.analyze_model(model, result.params, splits, cfg.eval.max_loops, mesh=mesh,
                                            batch_size=cfg.eval.batch_size)
    results[name] = {"n_layers": mrun.n_layers, "train_loops": mrun.recurrence,
                     "trained_max_hop": result.trained_max_hop, "steps": result.steps,
                     "n_params": count_params(result.params), "params_sum": params_checksum(result.params),
                     "train_seconds": result.wall_seconds, "stages": result.stages,
                     "accuracy": sweep_accuracy(analyses[name], cfg.eval.max_loops)}
  if jax.process_index() == 0:
    plots.heatmaps({n: r["accuracy"] for n, r in results.items()}, os.path.join(run_dir, "accuracy_hop_by_loops.png"),
                   {n: r["trained_max_hop"] for n, r in results.items()})
    md.write(os.path.join(run_dir, "report.md"), report(cfg, results))
    analysis.write(run_dir, analyses, {n: r["trained_max_hop"] for n, r in results.items()})
  return {"models": results, **halting_and_margins(analyses)}


def sweep_accuracy(model_analysis: dict, max_loops: int) -> dict:
  """accuracy[split][str(R)] for R = 1..max_loops from analyze_model's sweep (the same pass)."""
  return {s: {str(r): by_r[str(r)] for r in range(1, max_loops + 1)} for s, by_r in model_analysis["sweep"].items()}


def halting_and_margins(analyses: dict) -> dict:
  """The `halting` and `margins` parts of results.json: the summary numbers of each model's analysis."""
  halting = {n: {p: {s: {k: row[k] for k in ("accuracy", "mean_loops", "median_loops")} for s, row in table.items()}
                 for p, table in a["halting"].items()} for n, a in analyses.items()}
  margins = {n: {s: {k: m[k] for k in ("margin", "t_star", "peak_loop")} for s, m in a["margins"].items()}
             for n, a in analyses.items()}
  return {"halting": halting, "margins": margins}


best_over_loops = selection.oracle  # the oracle (best test accuracy over R); the benchmarks use this name


def report(cfg: Config, results: dict) -> str:
  """A short markdown report: per hop and model the test accuracy at the R chosen on validation beside the oracle,
  what it shows, the recipe deviations."""
  names = list(results)
  hops = sorted({data.hop_of(s) for r in results.values() for s in r["accuracy"]})
  pick = lambda n, hop: selection.select(results[n]["accuracy"], data.split_name(hop))
  lines = ["# Depth extrapolation", "",
           ("Test accuracy on held-out chains at the R chosen on the validation split (argmax over R = 1..%d, ties to "
            "the smallest R), and in brackets the oracle: the best test accuracy over R (an upper bound)."
            % cfg.eval.max_loops),
           "", "| hop | " + " | ".join(f"{n} ({results[n]['train_loops']}, L={results[n]['n_layers']})" for n in names)
           + " |", "|---" * (len(names) + 1) + "|"]
  for hop in hops:
    cells = [selection.text(pick(n, hop)) + (" *" if hop <= results[n]["trained_max_hop"] else "") for n in names]
    lines.append(f"| {hop} | " + " | ".join(cells) + " |")
  lines += ["", "`*` hops the model trained on. Steps and training time: " + "; ".join(
      f"{n} {r['steps']} steps, {r['train_seconds']:.0f} s, curriculum stages {r['stages']}" for n, r in results.items()),
            "", "## What it shows", ""]
  k = cfg.data.curriculum.last_hop
  for n, r in results.items():
    rec = cfg.models[n].rec
    beyond = [hop for hop in range(k + 1, k + 4) if hop in hops]
    best = ", ".join(f"{hop} hops {selection.text(pick(n, hop))}" for hop in beyond)
    more = sum((pick(n, hop)["r"] or 0) > rec.max_loops for hop in beyond)
    text = (f"- **{n}** (R = {r['train_loops']}, curriculum reached {r['trained_max_hop']} of {k} hops), on the "
            f"untrained hops k+1..k+3: at the validation-chosen R {best}; {more} of {len(beyond)} chosen with more "
            f"loops than its largest training R ({rec.max_loops})")
    if rec.schedule == "fixed":
      own = ", ".join(f"{hop} hops {r['accuracy'][data.split_name(hop)][str(rec.loops)]:.2f}" for hop in beyond)
      text += f"; at its own R = {rec.loops}: {own}"
    lines.append(text + ".")
  lines += ["", "## Deviations from the paper's recipe", "", cfg.deviations, ""]
  return "\n".join(lines)

