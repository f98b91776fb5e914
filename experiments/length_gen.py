"""Length generalization: train on difficulties up to data.train_max of a registered task (`data.name`: parity,
p_hop, ...), evaluate in-distribution and beyond (data.ood) by looping longer.

    make experiment NAME=length_gen                                  # cpu preset (parity)
    make experiment NAME=length_gen PRESET=smoke                     # seconds, used by the tests
    make experiment NAME=length_gen ARGS="data.name=p_hop data.context=32 data.seq_len=56 data.train_max=8"

Trains a looped model and a vanilla model of the same unrolled depth, then sweeps accuracy[difficulty, R] over every
split of the task (`Task.splits`: ID and OOD) with halting and margins as depth_extrap does (`analysis`).
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from experiments import depth_extrap
from looprec import config as C
from looprec import experiment, report as md, selection, sharding, tasks
from looprec.config import ConfigError, EvalConfig, ModelConfig, ModelRun, TrainConfig
from looprec.tasks import TaskConfig


@dataclasses.dataclass(frozen=True)
class Config(experiment.ExperimentConfig):
  data: TaskConfig = TaskConfig()


def smoke() -> Config:
  """Tiny and fast: parity on lengths 1..4, evaluated at 6 and 8; it is not meant to learn the task."""
  return Config(
      deviations="A tiny test configuration; it is not meant to learn the task.",
      data=TaskConfig(name="parity", train_min=1, train_max=4, ood="6,8", seq_len=9, n_eval=32),
      model=ModelConfig(d_model=32, n_heads=2, n_layers=1, pos_emb="none"),
      train=TrainConfig(steps=60, batch_size=32, warmup_steps=10, eval_every=30, checkpoint_every=60, log_every=10),
      eval=EvalConfig(max_hop=8, max_loops=6, batch_size=64),
      models={"looped": ModelRun(n_layers=1, recurrence="fixed:3"),
              "vanilla": ModelRun(n_layers=3, recurrence="fixed:1", steps=30)})


def cpu() -> Config:
  """Parity on lengths 1..8, evaluated at 12, 16 and 24, on a 2-core CPU in 3 to 7 minutes: a 1-layer block looped
  8 times (one loop per bit at the longest training length, Fan et al.'s T(n) = n) beside an 8-layer vanilla
  model, each at most 4 minutes."""
  return Config(
      deviations=("Fan et al. train lengths 1..20 with the loop count set per example to its length and read the "
                  "answer after an end marker; here lengths 1..8, a fixed R = 8 in training, d=64, NoPE, input "
                  "injection, lr 1e-3, batch 64, at most 4 minutes of training per model."),
      data=TaskConfig(name="parity", train_min=1, train_max=8, ood="12,16,24", seq_len=25, n_eval=256),
      model=ModelConfig(d_model=64, n_heads=4, n_layers=1, pos_emb="none", injection="add"),
      train=TrainConfig(steps=3000, max_minutes=4, batch_size=64, lr=1e-3, warmup_steps=200, eval_every=250,
                        checkpoint_every=1000),
      eval=EvalConfig(max_hop=24, max_loops=24),
      models={"looped": ModelRun(n_layers=1, recurrence="fixed:8"),
              "vanilla": ModelRun(n_layers=8, recurrence="fixed:1")})


def cpu_running() -> Config:
  """Parity as `cpu`, with R = the string's length per example in training (Fan et al.'s T(n) = n) and the parity
  of the bits so far supervised at every bit (both models), on a 2-core CPU in about 5 minutes."""
  base = cpu()
  return dataclasses.replace(
      base,
      deviations=("Fan et al. train lengths 1..20 and supervise only the answer; here lengths 1..8 with the parity "
                  "of the bits so far supervised at every bit (the answer read at `=` as theirs), R = the length "
                  "per example in training (theirs), d=64, NoPE, input injection, lr 1e-3, batch 64, at most 4 "
                  "minutes of training per model."),
      data=dataclasses.replace(base.data, running_parity=True),
      models={**base.models, "looped": ModelRun(n_layers=1, recurrence="difficulty:8")})


def cpu_p_hop() -> Config:
  """p-hop induction on p = 1..4 over 32 symbols of 4, evaluated at p = 6 and 8: a 2-layer block looped once per
  hop (R = p, at most 4 in training) beside an 8-layer vanilla model, 1500 steps each (at most 12 minutes)."""
  return Config(
      deviations=("Saunshi et al. train p = 16 over sequences of 256 with a 1-layer block looped 6 times and "
                  "evaluate in distribution; here p = 1..4 over 32 symbols of 4 (a jump that finds no previous "
                  "occurrence answers `none`: about 3% of answers at p = 4, 15% at 6, 39% at 8), p given as p "
                  "markers before the symbols, hop_p supervised at every symbol (Sanford et al.'s output) and read "
                  "at the last, R = p per example in training, a 2-layer block, d=64, RoPE, input injection, lr "
                  "1e-3, batch 64, 1500 steps per model."),
      data=TaskConfig(name="p_hop", train_min=1, train_max=4, ood="6,8", context=32, n_symbols=4, seq_len=40,
                      n_eval=256),
      model=ModelConfig(d_model=64, n_heads=4, n_layers=2, pos_emb="rope", injection="add"),
      train=TrainConfig(steps=1500, max_minutes=12, batch_size=64, lr=1e-3, warmup_steps=200, eval_every=250,
                        checkpoint_every=500),
      eval=EvalConfig(max_hop=8, max_loops=12),
      models={"looped": ModelRun(n_layers=2, recurrence="difficulty:4"),
              "vanilla": ModelRun(n_layers=8, recurrence="fixed:1")})


def cpu_copy() -> Config:
  """Copy on lengths 1..8, evaluated at 12 and 16: a 2-layer block looped once per bit (R = n, at most 8 in
  training) beside a 16-layer vanilla model, 1500 steps each (10 to 13 minutes in all on the 2-core machine)."""
  return Config(
      deviations=("Fan et al. train lengths 1..20 (a curriculum) for 100,000 steps with a 2-layer block of d=256 and "
                  "NoPE, also supervising end-of-sequence tokens after the answer; here lengths 1..8, the answer "
                  "only, a 2-layer block, d=64, NoPE, input injection, lr 1e-3, batch 64, 1500 steps per model."),
      data=TaskConfig(name="copy", train_min=1, train_max=8, ood="12,16", seq_len=32, n_eval=256),
      model=ModelConfig(d_model=64, n_heads=4, n_layers=2, pos_emb="none", injection="add"),
      train=TrainConfig(steps=1500, max_minutes=12, batch_size=64, lr=1e-3, warmup_steps=200, eval_every=250,
                        checkpoint_every=500),
      eval=EvalConfig(max_hop=16, max_loops=20),
      models={"looped": ModelRun(n_layers=2, recurrence="difficulty:8"),
              "vanilla": ModelRun(n_layers=16, recurrence="fixed:1")})


def cpu_addition() -> Config:
  """Binary addition on 1..8 bits, evaluated at 12 and 16: a 2-layer block looped once per bit (R = n, at most 8
  in training) beside a 16-layer vanilla model, 1500 steps each (18 to 21 minutes in all on 2 cores)."""
  return dataclasses.replace(
      cpu_copy(),
      deviations=("Fan et al. train 1..20 bits (a curriculum) for 100,000 steps with a 3-layer block of d=256 and "
                  "NoPE, also supervising end-of-sequence tokens after the answer; here 1..8 bits, the answer only, "
                  "a 2-layer block, d=64, NoPE, input injection, lr 1e-3, batch 64, 1500 steps per model."),
      data=TaskConfig(name="addition", train_min=1, train_max=8, ood="12,16", seq_len=50, n_eval=256))


PRESETS = {"smoke": smoke, "cpu": cpu, "cpu_running": cpu_running, "cpu_p_hop": cpu_p_hop, "cpu_copy": cpu_copy,
           "cpu_addition": cpu_addition}
DEFAULT_PRESET = "cpu"


def validate(cfg: Config):
  """Cross-field checks; raises ConfigError naming the culprit."""
  C.validate_experiment(cfg)  # data.validate: the task's own checks (name, ranges, seq_len)
  sharding.check_batch(cfg.train.batch_size, sharding.make_mesh(cfg.train.fsdp))
  if cfg.model.pos_emb == "learned" and cfg.model.max_positions < cfg.data.seq_len:
    raise ConfigError(f"model.max_positions={cfg.model.max_positions} < data.seq_len={cfg.data.seq_len}")


def eval_splits(task, max_hop: int) -> dict:
  """Every test split of the task and its validation split (max_hop is the task's own: data.ood)."""
  del max_hop
  return task.labelled()


def run(cfg: Config, run_dir: str) -> dict:
  """Trains every model, sweeps, halts and analyzes it on every split; returns the body of results.json."""
  return depth_extrap.train_and_analyze(cfg, run_dir, eval_splits, functools.partial(report, cfg))


def report(cfg: Config, task, results: dict, sizes: dict) -> str:
  """Per split (difficulty, ID or OOD) and model: test accuracy at the R chosen on validation, and the oracle;
  beside them the accuracy of always giving the split's most frequent answer."""
  names = list(results)
  lines = [f"# Length generalization: {cfg.data.name}", "",
           f"Test accuracy per {tasks.TASKS[cfg.data.name].difficulty} at the R chosen on the validation split "
           f"(R = 1..{cfg.eval.max_loops}), the oracle in brackets; trained on {cfg.data.train_min}.."
           f"{cfg.data.train_max}. *Most frequent answer*: the accuracy of always answering the test split's most "
           "frequent answer.", "",
           "| difficulty | split | test examples | most frequent answer | " + " | ".join(
               f"{md.model_name(n, cfg.kind(n))} ({results[n]['train_loops']}, L={results[n]['n_layers']})"
               for n in names) + " |", "|---" * (len(names) + 4) + "|"]
  for s in task.splits():
    target_N = task.eval_split(s.difficulty)["target"]
    _, counts = np.unique(target_N.reshape(len(target_N), -1), axis=0, return_counts=True)  # a sequence: its rows
    cells = [selection.text(selection.select(results[n]["accuracy"], s.name))
             + (f"; R = {s.difficulty}: {results[n]['accuracy'][s.name][str(s.difficulty)]:.2f}"
                if cfg.models[n].rec.schedule == "difficulty" and s.difficulty <= cfg.eval.max_loops else "")
             for n in names]
    lines.append(f"| {s.difficulty} | {'OOD' if s.ood else 'ID'} | {md.examples(sizes.get(s.name))} | "
                 f"{counts.max() / counts.sum():.2f} | " + " | ".join(cells) + " |")
  lines += md.small_note(sizes) + ["", "## Deviations from the papers' setups", "", cfg.deviations, ""]
  return "\n".join(lines)
