"""Systematic generalization (RECIPE task A): compose atomic facts never composed in training.

    make experiment NAME=systematicity                   # cpu preset (default; 16–22 min per seed on 2 cores)
    make experiment NAME=systematicity PRESET=cpu_long   # hours, for the OOD stage; resumable with RESUME=
    make experiment NAME=systematicity PRESET=paper      # the official recipe (GPU/TPU)

Trains a looped model and a vanilla model of the same unrolled depth on all atomic facts plus the ID 2-hop
compositions, recording every probe split's accuracy during training (the grokking curves: train, then ID,
then, if ever, OOD). Then evaluates each split for R = 1..eval.max_loops and runs the logit lens on the 2-hop
probes: at which loop (and layer) the bridge entity and the answer become decodable at the answer position.
"""
from __future__ import annotations

import dataclasses
import os

import jax

from data_gen.composition import SPLITS
from looprec import config as C
from looprec import data, eval as evaluation, experiment, lens, plots, report as md, runs, selection, sharding, tasks
from looprec.config import CompositionDataConfig, ConfigError, EvalConfig, ModelConfig, ModelRun, TrainConfig
from looprec.models import count_params, params_checksum

STAGE_ACCURACY = 0.9  # a split's stage step: the first evaluation at or above this accuracy
TWO_HOP = [s for s in SPLITS if "inferred" in s]


@dataclasses.dataclass(frozen=True)
class Config(experiment.ExperimentConfig):
  """eval.max_loops: R of the final accuracy sweep. No hop curriculum: every training fact (1 and 2 hops) is in
  play from the first step."""

  data: CompositionDataConfig = CompositionDataConfig()


TINY = {"*": "A tiny test configuration; it is not meant to learn the task."}
CPU_REASONS = {
    **experiment.because("Scaled down for a 2-core CPU: N = 100, M = 20, out-degree 10 (paper: 2000, 200, 20).",
                         "data.n_entities", "data.n_relations", "data.out_degree"),
    **experiment.because("10% OOD atomic facts and 5% of the ID 2-hop paths held out (paper: 5%, 0.5%): at the "
                         "paper's shares this small graph would leave a few dozen test facts.", "data.ood_ratio",
                         "data.iid_test_prob"),
    **experiment.because("The answer read at the relation token, with 4 learned positions for it (paper: the "
                         "official collate, batch_last, 5 positions); docs/reproducing.md measures what the "
                         "official position changes.", "data.answer_at", "model.max_positions"),
    **experiment.because("d = 64 with 4 heads, a 1-layer block looped R = 4 against 4 plain layers (paper: 768, "
                         "12, a 4-layer block looped 4 times against 16 layers).", "model.d_model", "model.n_heads",
                         "models.looped.n_layers", "models.vanilla.n_layers"),
    **experiment.because("No dropout (paper: 0.1 on embeddings, attention and residuals), so none to switch off "
                         "after the first evaluation.", "model.embed_dropout", "model.attn_dropout",
                         "model.resid_dropout", "train.dropout_until_check"),
    **experiment.because("The project's GPT-2-trainer initialisation and Flax's LayerNorm epsilon (N(0, 0.02) "
                         "embeddings, output projections scaled by 1/sqrt(2L), eps 1e-6; paper: N(0, 1), unscaled, "
                         "1e-5); docs/reproducing.md measures the embedding init.", "model.embed_init_std",
                         "model.out_init_scaled", "model.ln_eps"),
    **experiment.because("float32 throughout: a CPU has no fast bfloat16 (paper: bf16 training, float32 "
                         "evaluation).", "model.dtype", "model.eval_dtype"),
    **experiment.because("The results here were trained with seed 0 (paper: 42).", "seed"),
    **experiment.because("A fixed CPU step budget: batch 256, lr 3e-3 with 500 warmup steps, clipping 1.0, a "
                         "constant lr after warmup, weight decay 0.2 on matrices only, evaluated every 250 steps "
                         "(paper: batch 128, lr 1e-4, 2000 warmup steps, no clipping, linear decay over 150,001 "
                         "epochs, weight decay 0.1 on every parameter, evaluated every epoch).", "train.steps",
                         "train.batch_size", "train.lr", "train.warmup_steps", "train.grad_clip",
                         "train.decay_steps", "train.weight_decay", "train.weight_decay_on", "train.eval_every",
                         "train.checkpoint_every"),
}


def _train(**kw) -> TrainConfig:
  return TrainConfig(restart_optimizer=False, **kw)


def smoke() -> Config:
  """Tiny and fast: exercises training, curves, the sweep and the lens in well under a minute."""
  return Config(
      reasons=TINY,
      data=CompositionDataConfig(n_entities=24, n_relations=4, out_degree=3, phi=2.0, n_probe=128),
      model=ModelConfig(d_model=32, n_heads=2, pos_emb="learned", max_positions=4, injection="none"),
      train=_train(steps=120, batch_size=32, lr=3e-3, warmup_steps=10, weight_decay=0.1, label_smoothing=0.1,
                   eval_every=40, checkpoint_every=40, log_every=10),
      eval=EvalConfig(max_hop=2, max_loops=4, batch_size=256),
      models={"looped": ModelRun(n_layers=1, recurrence="fixed:2"),
              "vanilla": ModelRun(n_layers=2, recurrence="fixed:1", steps=80)})


def cpu() -> Config:
  """The default: N=100 entities on a 2-core CPU, one layer looped 4 times vs 4 plain layers (see
  docs/reproducing.md)."""
  return Config(
      reasons=CPU_REASONS,
      data=CompositionDataConfig(n_entities=100, n_relations=20, out_degree=10, ood_ratio=0.1, phi=7.2,
                                 iid_test_prob=0.05),
      model=ModelConfig(d_model=64, n_heads=4, pos_emb="learned", max_positions=4, injection="none"),
      train=_train(steps=25000, batch_size=256, lr=3e-3, warmup_steps=500, weight_decay=0.2, label_smoothing=0.1,
                   grad_clip=1.0, eval_every=250, checkpoint_every=2500),
      eval=EvalConfig(max_hop=2, max_loops=8, batch_size=1024),
      models={"looped": ModelRun(n_layers=1, recurrence="fixed:4"),
              "vanilla": ModelRun(n_layers=4, recurrence="fixed:1")})


def cpu_long() -> Config:
  """The cpu setting for hours, for the OOD stage, with every atomic fact four times per epoch (the variant of
  benchmarks/systematicity_ood.py that moved OOD most: OOD atomic facts are otherwise partly forgotten); stop it
  and resume it at will (`RESUME=runs/...`)."""
  cfg = cpu()
  return dataclasses.replace(
      cfg, data=dataclasses.replace(cfg.data, atomic_repeats=4),
      train=dataclasses.replace(cfg.train, steps=400_000, eval_every=1000, checkpoint_every=5000),
      reasons={**cfg.reasons, **experiment.because(
          "Every atomic fact four times per epoch (paper: once), the variant of benchmarks/systematicity_ood.py "
          "that moved OOD most.", "data.atomic_repeats")})


def paper() -> Config:
  """The official training script's values (docs/reproducing.md, "The official recipe, value by value"): N=2000,
  M=200, out-degree 20, 5% OOD, phi=7.2, d=768, 12 heads, learned positions, N(0, 1) embeddings, unscaled output
  projections, dropout 0.1, L=4 looped R=4 against 16 plain layers, AdamW lr 1e-4, weight decay 0.1 on every
  parameter, no clipping, batch 128, the official answer position, bf16 training and float32 evaluation, dropout
  in the first epoch only (the official loop's first evaluation switches it off for good), seed 42."""
  epoch = 2450  # steps per epoch of the phi = 7.2 training set (313,600 rows / 128)
  return Config(
      seed=42,
      deviations=("The official values, except: a step budget replaces the 150,001 epochs (the linear decay runs "
                  "over that nominal length, so the rate is near constant); each probe split is evaluated as its "
                  "own batch group (official: test.json in batches of 128, so the few OOD atomic probes sharing a "
                  "batch with 2-hop probes are read at the pad); the vanilla model's depth (16 layers, the looped "
                  "model's unrolled depth) is this preset's choice, the script takes it as an argument."),
      data=CompositionDataConfig(n_entities=2000, n_relations=200, out_degree=20, ood_ratio=0.05, phi=7.2,
                                 answer_at="batch_last"),
      model=ModelConfig(d_model=768, n_heads=12, pos_emb="learned", max_positions=5, injection="none",
                        embed_init_std=1.0, out_init_scaled=False, ln_eps=1e-5,
                        embed_dropout=0.1, attn_dropout=0.1, resid_dropout=0.1, dtype="bfloat16",
                        eval_dtype="float32"),
      train=_train(steps=2_000_000, batch_size=128, lr=1e-4, warmup_steps=2000, decay_steps=150_001 * epoch,
                   weight_decay=0.1, weight_decay_on="all", label_smoothing=0.1, grad_clip=0.0, eval_every=epoch,
                   checkpoint_every=10 * epoch, dropout_until_check=True),
      eval=EvalConfig(max_hop=2, max_loops=8, batch_size=1024),
      models={"looped": ModelRun(n_layers=4, recurrence="fixed:4"),
              "vanilla": ModelRun(n_layers=16, recurrence="fixed:1")})


PRESETS = {"smoke": smoke, "cpu": cpu, "cpu_long": cpu_long, "paper": paper}
DEFAULT_PRESET = "cpu"


def validate(cfg: Config):
  """Cross-field checks; raises ConfigError naming the culprit."""
  C.validate_experiment(cfg)
  width = data.width(2, cfg.data.answer_at)
  if cfg.model.pos_emb == "learned" and cfg.model.max_positions < width:
    raise ConfigError(f"model.max_positions={cfg.model.max_positions} < {width}, the length of a 2-hop query")
  sharding.check_batch(cfg.train.batch_size, sharding.make_mesh(cfg.train.fsdp))
  tasks.make_task(cfg.data)  # builds or reads the dataset: impossible sizes or a bad folder fail here


def eval_splits(task, max_hop: int) -> dict:
  """The probe splits (all of at most 2 hops, whatever max_hop)."""
  del max_hop
  return task.probes


def stage_steps(curves: dict, level: float = STAGE_ACCURACY) -> dict:
  """split -> the first evaluated step with accuracy >= level, or None."""
  return {split: next((step for step, acc in points if acc >= level), None) for split, points in curves.items()}


def evaluate_model(cfg: Config, task, name: str, params, mesh, max_loops: int | None = None) -> dict:
  """Accuracy of every probe split (test and validation halves) for R = 1..max_loops (default eval.max_loops),
  `final` at the training R, and the logit lens of the test splits over the training loops."""
  model = cfg.build_model(name, task.vocab.size, evaluating=True)
  loops = cfg.models[name].rec.max_loops
  max_loops = max(max_loops or cfg.eval.max_loops, loops)
  accuracy = evaluation.sweep(model, params, task.probes, max_loops, mesh, cfg.eval.batch_size)
  tests = {s: ex for s, ex in task.probes.items() if not selection.is_val(s)}
  return {"accuracy": accuracy, "final": {s: by_r[str(loops)] for s, by_r in accuracy.items()},
          "logit_lens": lens.logit_lens(model, params, tests, loops, mesh, cfg.eval.batch_size)}


def run(cfg: Config, run_dir: str) -> dict:
  """Trains and evaluates every model; returns the `models`, `curves`, `stages` and `logit_lens` parts of
  results.json and writes grokking.png, logit_lens.png and report.md."""
  mesh = sharding.make_mesh(cfg.train.fsdp)
  task = tasks.make_task(cfg.data)
  models, curves, lenses = {}, {}, {}
  for name, _, result in experiment.train_models(cfg, task, mesh, run_dir):
    mrun = cfg.models[name]
    with runs.stage(f"{name}: sweep over R = 1..{cfg.eval.max_loops} and the logit lens"):
      evaluated = evaluate_model(cfg, task, name, result.params, mesh)
    curves[name], lenses[name] = result.curves, evaluated.pop("logit_lens")
    models[name] = {"n_layers": mrun.n_layers, "train_loops": mrun.recurrence, "steps": result.steps,
                    "n_params": count_params(result.params), "params_sum": params_checksum(result.params),
                    "train_seconds": result.wall_seconds, **evaluated}
  stages = {name: stage_steps(c) for name, c in curves.items()}
  sizes = {s: len(ex["target"]) for s, ex in task.probes.items()}
  if jax.process_index() == 0:
    with runs.stage("figures and report"):
      write_figures(run_dir, curves, lenses)
      md.write(os.path.join(run_dir, "report.md"), report(cfg, models, stages, lenses, sizes))
  return {"models": models, "examples": sizes, "curves": curves, "stages": stages, "logit_lens": lenses}


def write_figures(run_dir: str, curves: dict | None, lenses: dict):
  if curves:
    plots.grokking(curves, os.path.join(run_dir, "grokking.png"))
  plots.lens_curves(lenses, os.path.join(run_dir, "logit_lens.png"))


def analyze_run(cfg: Config, run_dir: str, restored: dict, max_loops: int | None = None) -> str:
  """The evaluation of `run` on a run folder's latest checkpoints (`python -m looprec analyze RUN [--max-loops
  N]`): writes analysis.json (accuracy sweep, final accuracy, logit lens per model) and the figures; returns its
  path. restored: model -> (params, checkpoint meta)."""
  mesh = sharding.loading_mesh(cfg.train.fsdp)  # the mesh load_run laid the params out on
  task = tasks.make_task(cfg.data)
  out = {}
  for name, (params, _) in restored.items():
    with runs.stage(f"{name}: sweep and the logit lens"):
      out[name] = evaluate_model(cfg, task, name, params, mesh, max_loops)
  path = os.path.join(run_dir, "analysis.json")
  if jax.process_index() == 0:
    runs.write_json(path, {"models": out})
    write_figures(run_dir, {name: meta.get("curves") for name, (_, meta) in restored.items() if meta.get("curves")},
                  {name: o["logit_lens"] for name, o in out.items()})
  return path


def report(cfg: Config, models: dict, stages: dict, lenses: dict, sizes: dict) -> str:
  """Markdown: final accuracy and stage step per split and model (named with its kind), the examples per split
  (sizes: split -> n; too small ones flagged), the lens peaks, what it shows, the recipe deviations."""
  names = list(models)
  head = " | ".join(f"{md.model_name(n, cfg.kind(n))}, L={models[n]['n_layers']}, {models[n]['train_loops']}"
                    for n in names)
  lines = ["# Systematic generalization", "",
           (f"Accuracy at the training R after the last step, and (in brackets) the first step at which it reached "
            f"{STAGE_ACCURACY} (evaluated every {cfg.train.eval_every} steps; - = never)."), "",
           f"| split | n | {head} |", "|---" * (len(names) + 2) + "|"]
  shown = [s for s in SPLITS if s in stages[names[0]]]  # a data folder may lack the mixed splits
  for split in shown:
    cells = [f"{models[n]['final'][split]:.2f} ({stages[n][split] or '-'})" for n in names]
    lines.append(f"| {split} | {md.examples(sizes.get(split))} | " + " | ".join(cells) + " |")
  lines += ["", ("Held-out splits (`test_*`) are the even rows of each probe split; their odd rows (`val_*`) choose R "
                 "after training. Test accuracy at the R chosen on validation (argmax over R = 1..%d, ties to the "
                 "smallest R), and in brackets the oracle, the best test accuracy over R (an upper bound):"
                 % cfg.eval.max_loops), "",
            f"| split | n test / val | {head} |", "|---" * (len(names) + 2) + "|"]
  for split in [s for s in SPLITS if s.startswith("test_") and s in models[names[0]]["accuracy"]]:
    counts = f"{md.examples(sizes.get(split))} / {md.examples(sizes.get(selection.val_split(split)))}"
    lines.append(f"| {split} | {counts} | " + " | ".join(selection.text(selection.select(models[n]["accuracy"], split))
                                                          for n in names) + " |")
  lines += md.small_note(sizes)
  lines += ["", "Training: " + "; ".join(f"{n} {m['steps']} steps, {m['train_seconds']:.0f} s"
                                          for n, m in models.items()), "",
            "## Logit lens", "",
            ("Peak top-1 rate (the loop and the layer, counted over all loops, where it peaks first) of the answer "
             "and of the bridge entity at the answer position, and of the bridge at the first relation's token (r1), "
             "each read through the final norm and the tied head."), "",
            "| model | split | n | answer | bridge | bridge at r1 |", "|---|---|---|---|---|---|"]
  for n in names:
    for split in TWO_HOP:
      if split in lenses[n]:
        cells = [f"{s['peak_top1']:.2f} ({s['peak_loop']}, {s['peak_layer']})"
                 for s in (lenses[n][split][k] for k in ("answer", "bridge", "bridge_at_r1"))]
        lines.append(f"| {md.model_name(n, cfg.kind(n))} | {split} | {md.examples(sizes.get(split))} | "
                     + " | ".join(cells) + " |")
  lines += ["", "## What it shows", ""] + [f"- **{md.model_name(n, cfg.kind(n))}**: "
                                             f"{summary(stages[n], models[n]['final'], lenses[n], sizes)}" for n in names]
  lines += ["", "## Deviations from the paper's recipe", "", experiment.deviations_text(cfg, paper()), ""]
  return "\n".join(lines)


def summary(stages: dict, final: dict, lenses: dict, sizes: dict | None = None) -> str:
  """One sentence per model: when it memorised and generalised, how far OOD got, what the lens saw; an accuracy
  on a split under report.SMALL examples says so."""
  step = lambda split: f"at step {stages[split]}" if stages.get(split) is not None else "never"
  n = lambda split: (sizes or {}).get(split, md.SMALL)
  acc = lambda split: ("n/a" if split not in final else f"{final[split]:.2f}" if n(split) >= md.SMALL else
                       f"{final[split]:.2f} on {n(split)} example{'s' * (n(split) != 1)}, too few to read")
  text = (f"accuracy >= {STAGE_ACCURACY}: training 2-hop facts {step('train_inferred')}, ID test "
          f"{step('test_inferred_iid')}, OOD test {step('test_inferred_ood')} (final OOD "
          f"{acc('test_inferred_ood')}; first hop OOD {acc('test_inferred_ood_first')}, second hop OOD "
          f"{acc('test_inferred_ood_second')})")
  if "test_inferred_iid" in lenses:
    lens_ = lenses["test_inferred_iid"]
    depth = len(lens_["answer"]["top1"]) * lens_["answer"]["n_layers"]
    peak = lambda s: (f"peaks at {s['peak_top1']:.2f} after layer {s['peak_layer']} of {depth}" if s["peak_top1"] > 0
                      else "is 0 after every layer (never top-1)")
    text += (f"; logit lens on ID test facts: the answer's top-1 rate {peak(lens_['answer'])}, the bridge's at r1 "
             f"{peak(lens_['bridge_at_r1'])}, the bridge's at the answer position {peak(lens_['bridge'])}")
  return text + "."
