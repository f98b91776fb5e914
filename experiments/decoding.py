"""Looped models that generate (issue 20): KV-cached decoding of the generation task under every cache policy,
and MELT's gated shared cache trained from the per-loop model.

    make experiment NAME=decoding                     # cpu preset
    make experiment NAME=decoding PRESET=smoke        # seconds, used by the tests

A looped model (`per_loop`: it is the per-loop-cache teacher) trains with teacher forcing on the generation task
(`looprec.generation`: write the k entities of a chain's path, or with written=final only its last entity after
the prompt, the implicit variant), then MELT (`looprec.melt.train`, models.melt.steps
split evenly between the transition and the distillation) from it. Every policy of `policies` decodes the
held-out chains (test and validation) of hops 1..eval.max_hop greedily at R = 1..eval.max_loops; melt with the
MELT student's params, the others with the per-loop model's. results.json's `models` has one entry per policy,
`accuracy[split][R]` the final-entity accuracy (`path_accuracy` the whole path's); `policies` the KV bytes per
token at R = 4, 8, 16, 32, decode tokens/s at batch 1 and 64 (at the trained R, `decode.tokens_per_second`) and
the KL to the per-loop teacher per hop at the trained R. analysis.json also has each policy's `halting`: per rule
of `halting`, the final entity decoded with adaptive depth per row and token (`decode.generate_halting`, at most
eval.max_loops loops) and the loops it was read at. `python -m looprec analyze RUN` evaluates the checkpoints
again into analysis.json.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from looprec import checkpoint, decode, experiment, generation, halting, melt, report as md, runs, selection, tasks
from looprec import config as C
from looprec.config import ChainDataConfig, ConfigError, CurriculumConfig, EvalConfig, ModelConfig, ModelRun
from looprec.config import TrainConfig
from looprec.data import hop_of, split_name
from looprec.models import count_params, params_checksum

BYTES_AT = (4, 8, 16, 32)  # R of the bytes-per-token column
SPEED_BATCHES = (1, 64)
WHAT_IS_WRITTEN = {"path": "the paths", "final": "only the final entity (the implicit variant)"}
SPEED_PROMPT = 4  # prompt tokens of the tokens/s measurement


@dataclasses.dataclass(frozen=True)
class Config(experiment.ExperimentConfig):
  data: ChainDataConfig = ChainDataConfig()
  policies: str = "per_loop,first_loop,last_loop,cycle:2,melt"  # decode.parse_policy names, comma-separated
  written: str = "path"  # generation.WRITTEN: the whole path, or only the final entity (the implicit variant)
  halting: str = "kl_entropy_rel,argmax"  # halting.parse_policy specs, comma-separated; "" = none
  melt_beta: float = 1.0  # weight of the per-loop state alignment in MELT's distillation phase
  speed_new: int = 16  # tokens written per row in the tokens/s measurement
  speed_repeats: int = 3  # timed calls per measurement (the median is kept)


def smoke() -> Config:
  """A tiny graph and model, a few steps of each phase: exercises every part in seconds."""
  return Config(
      reasons={"*": "A tiny test configuration; it is not meant to learn the task."},
      data=ChainDataConfig(n_entities=8, n_relations=2, seq_len=6, n_eval=32, test_fraction=0.2,
                           curriculum=CurriculumConfig(first_hop=1, last_hop=2)),
      model=ModelConfig(d_model=32, n_heads=2, n_layers=1, max_positions=16),
      train=TrainConfig(steps=40, batch_size=32, lr=3e-3),
      eval=EvalConfig(max_hop=3, max_loops=3, batch_size=64),
      models={"per_loop": ModelRun(n_layers=1, recurrence="fixed:2"),
              "melt": ModelRun(n_layers=1, recurrence="fixed:2", steps=10)},
      speed_new=4, speed_repeats=1)


def cpu() -> Config:
  """16 entities, 4 relations, paths of 1..4 hops written by a one-layer block looped 3 times (d = 64) in 4,500
  steps, MELT from it in 8,000; evaluated on hops 1..6 at R = 1..8; 6 to 10 minutes on a 2-core CPU."""
  return Config(
      data=ChainDataConfig(n_entities=16, n_relations=4, seq_len=8, n_eval=128,
                           curriculum=CurriculumConfig(first_hop=1, last_hop=4)),
      model=ModelConfig(d_model=64, n_heads=4, n_layers=1, max_positions=16),
      train=TrainConfig(steps=4500, batch_size=64, lr=3e-3),
      eval=EvalConfig(max_hop=6, max_loops=8, batch_size=128),
      models={"per_loop": ModelRun(n_layers=1, recurrence="fixed:3"),
              "melt": ModelRun(n_layers=1, recurrence="fixed:3", steps=8000)},
      speed_new=12)


def cpu_implicit() -> Config:
  """The implicit variant (written=final: only the final entity after the prompt) with the depth task's recipe
  (20 entities, NoPE, a 2-token attention window, input injection; experiments/depth_extrap.py), trained with
  R = 4 on hops 1..4 so that the teacher extrapolates in depth when it loops more; evaluated on hops 1..8 at
  R = 1..12 and with halting; 6 to 7 minutes on a 2-core CPU."""
  base = cpu()
  return dataclasses.replace(
      base, written="final",
      data=dataclasses.replace(base.data, n_entities=20, seq_len=12),
      model=dataclasses.replace(base.model, pos_emb="none", attn_window=2, injection="add"),
      eval=dataclasses.replace(base.eval, max_hop=8, max_loops=12),
      models={"per_loop": ModelRun(n_layers=1, recurrence="fixed:4"),
              "melt": ModelRun(n_layers=1, recurrence="fixed:4", steps=8000)})


PRESETS = {"smoke": smoke, "cpu": cpu, "cpu_implicit": cpu_implicit}
DEFAULT_PRESET = "cpu"


def policies(cfg: Config) -> list[str]:
  return [p for p in cfg.policies.split(",") if p]


def halting_rules(cfg: Config) -> list[str]:
  return [h for h in cfg.halting.split(",") if h]


def train_loops(cfg: Config) -> int:
  return cfg.models["per_loop"].rec.loops


def validate(cfg: Config):
  """The shared checks; the two models (per_loop trained, melt from it) with one fixed R; every policy parses;
  the longest chain fits the model's positions."""
  C.validate_experiment(cfg)
  if set(cfg.models) != {"per_loop", "melt"}:
    raise ConfigError(f"models: decoding trains exactly per_loop and melt, got {', '.join(cfg.models)}")
  for name, run in cfg.models.items():
    if run.rec.schedule != "fixed" or run.rec.loops != train_loops(cfg):
      raise ConfigError(f"models.{name}.recurrence={run.recurrence}: both models need the same fixed:R")
  for p in policies(cfg):
    decode.parse_policy(p)
  if not policies(cfg):
    raise ConfigError("policies: name at least one cache policy")
  for h in halting_rules(cfg):
    halting.parse_policy(h)
  if cfg.written not in generation.WRITTEN:
    raise ConfigError(f"written={cfg.written!r}: one of {', '.join(generation.WRITTEN)}")
  longest = generation.seq_len(cfg.eval.max_hop, cfg.written)
  if longest > cfg.model.max_positions:
    raise ConfigError(f"eval.max_hop={cfg.eval.max_hop}: a chain of that many hops needs model.max_positions >= "
                      f"{longest}, got {cfg.model.max_positions}")
  if SPEED_PROMPT + cfg.speed_new > cfg.model.max_positions:
    raise ConfigError(f"speed_new={cfg.speed_new}: {SPEED_PROMPT} prompt tokens and {cfg.speed_new} written exceed "
                      f"model.max_positions={cfg.model.max_positions}")
  if cfg.eval.max_hop > cfg.data.fitting_hops():
    raise ConfigError(f"eval.max_hop={cfg.eval.max_hop}: data.seq_len={cfg.data.seq_len} fits "
                      f"{cfg.data.fitting_hops()} hops")


def eval_splits(task, max_hop: int, written: str) -> dict:
  """split -> the held-out chains of hops 1..max_hop as generation prompts and paths (test and validation)."""
  gen = generation.GenerationTask(task.cfg, written)
  out = {}
  for hop in range(1, max_hop + 1):
    out[split_name(hop)] = gen.eval_split(hop)
    out[selection.val_split(split_name(hop))] = gen.val_split(hop)
  return out


def params_of(name: str) -> str:
  """The trained model whose params a policy decodes with."""
  return "melt" if name == "melt" else "per_loop"


def by_hop(splits: dict) -> dict:
  """hop -> (the prompts of its splits as one batch, [(split, its chains, its first row)])."""
  groups = {}
  for split, ex in splits.items():
    groups.setdefault(hop_of(split), []).append((split, ex))
  out = {}
  for hop, group in groups.items():
    starts = np.cumsum([0] + [len(ex["path"]) for _, ex in group])
    out[hop] = (np.concatenate([ex["prompt"] for _, ex in group]),
                [(split, ex, start) for (split, ex), start in zip(group, starts)])
  return out


def sweep(model, params, policy: str, splits: dict, max_loops: int, written: str) -> dict:
  """{"accuracy", "path_accuracy"}: split -> {str(R): final-entity / whole-path accuracy} for R = 1..max_loops;
  "correct": test split -> {str(R): a "0"/"1" per chain, its final entity right} (what `summary` pairs with the
  per-loop teacher's). The splits of one hop decode as one batch (one compiled program per hop and R)."""
  out = {"accuracy": {}, "path_accuracy": {}, "correct": {}}
  for hop, (prompt, group) in by_hop(splits).items():
    for r in range(1, max_loops + 1):
      generated = np.asarray(decode.generate(model, params, prompt, generation.n_written(hop, written), r, policy))
      for split, ex, start in group:
        rows_BxK = generated[start:start + len(ex["path"])]
        got = generation.path_accuracy(rows_BxK, ex["path"])
        out["accuracy"].setdefault(split, {})[str(r)] = got["final"]
        out["path_accuracy"].setdefault(split, {})[str(r)] = got["path"]
        if not selection.is_val(split):
          right_B = rows_BxK[:, -1] == ex["path"][:, -1]
          out["correct"].setdefault(split, {})[str(r)] = "".join("1" if x else "0" for x in right_B)
  return out


def halt(model, params, policy: str, splits: dict, cfg: Config) -> dict:
  """halting rule -> split -> {"accuracy", "mean_loops", "median_loops"}: the final entity decoded with adaptive
  depth per row and token (`decode.generate_halting`, at most eval.max_loops loops), and the loop it was read at.
  The splits of one hop decode as one batch."""
  out = {rule: {} for rule in halting_rules(cfg)}
  for hop, (prompt, group) in by_hop(splits).items():
    for rule in out:
      tokens, loops = (np.asarray(x) for x in decode.generate_halting(
          model, params, prompt, generation.n_written(hop, cfg.written), cfg.eval.max_loops, policy, rule,
          answers=cfg.data.n_entities))
      for split, ex, start in group:
        rows = slice(start, start + len(ex["path"]))
        out[rule][split] = {
            "accuracy": generation.path_accuracy(tokens[rows], ex["path"])["final"],
            "mean_loops": float(loops[rows, -1].mean()), "median_loops": float(np.median(loops[rows, -1]))}
  return out


def evaluate(cfg: Config, model, params: dict, splits: dict) -> dict:
  """policy -> its sweep (`sweep`), its KL to the per-loop teacher per hop at the trained R, and its `halting`;
  one `runs.stage` line per policy."""
  out = {}
  r = train_loops(cfg)
  for policy in policies(cfg):
    with runs.stage(f"{policy}: sweep over R = 1..{cfg.eval.max_loops}, KL to per_loop, halting"):
      p = params[params_of(policy)]
      got = sweep(model, p, policy, splits, cfg.eval.max_loops, cfg.written)
      kl = {str(hop_of(s)): decode.kl_to_teacher(model, params["per_loop"], p, policy, ex["prompt"], ex["path"], r)
            for s, ex in splits.items() if not selection.is_val(s)}
      out[policy] = {"sweep": got["accuracy"], "path_sweep": got["path_accuracy"], "correct": got["correct"], "kl": kl,
                     "halting": halt(model, p, policy, splits, cfg)}
    # Each compiled (hop, R) program maps its machine code: a few hundred of them per policy, kept for the whole
    # run, exhaust the process's memory maps (vm.max_map_count, 65,530 by default; LLVM "Cannot allocate memory").
    jax.clear_caches()
  return out


def memory_and_speed(cfg: Config, model, params: dict) -> dict:
  """policy -> KV bytes per token at BYTES_AT and greedy tokens/s at SPEED_BATCHES (trained R)."""
  return {policy: {"bytes_per_token": {str(r): decode.bytes_per_token(model, decode.parse_policy(policy), r)
                                       for r in BYTES_AT},
                   "tokens_per_s": {str(b): decode.tokens_per_second(model, params[params_of(policy)], policy, b,
                                                                      train_loops(cfg), cfg.speed_new,
                                                                      cfg.speed_repeats, SPEED_PROMPT)
                                    for b in SPEED_BATCHES}}
          for policy in policies(cfg)}


def run(cfg: Config, run_dir: str) -> dict:
  """Trains the per-loop model and MELT from it (each checkpointed), evaluates every policy, writes report.md and
  analysis.json; returns the body of results.json."""
  chain_task = tasks.make_task(cfg.data)
  task = generation.GenerationTask(cfg.data, cfg.written)
  model = cfg.build_model("per_loop", task.vocab.size)
  r = train_loops(cfg)
  fingerprint = checkpoint.task_fingerprint(chain_task)
  params, trained, losses = {}, {}, {}
  teacher, losses["per_loop"] = generation.train(model, model.init(jax.random.PRNGKey(cfg.seed), 8), task, r,
                                                 cfg.train.steps, cfg.train.batch_size, cfg.train.lr)
  params["per_loop"] = teacher
  melt_steps = cfg.models["melt"].steps or cfg.train.steps
  params["melt"], kls = melt.train(model, teacher, task, r, melt_steps // 2, melt_steps - melt_steps // 2,
                                   cfg.train.batch_size, lr=cfg.train.lr / 3, beta=cfg.melt_beta)
  losses["melt"] = kls[-1]
  trained = {"per_loop": cfg.train.steps, "melt": melt_steps}
  for name, p in params.items():
    checkpoint.save_params(os.path.join(run_dir, "checkpoints", name), p,
                           {"data_fingerprint": fingerprint, "steps": trained[name]}, step=trained[name])
  splits = eval_splits(chain_task, cfg.eval.max_hop, cfg.written)
  analyses = evaluate(cfg, model, params, splits)
  results = {}
  for policy, a in analyses.items():
    p = params[params_of(policy)]
    results[policy] = {"kind": model.cfg.kind, "params_of": params_of(policy), "n_layers": cfg.model.n_layers,
                       "train_loops": cfg.models[params_of(policy)].recurrence,
                       "trained_max_hop": cfg.data.curriculum.last_hop, "steps": trained[params_of(policy)],
                       "final_loss": losses[params_of(policy)], "n_params": count_params(p),
                       "params_sum": params_checksum(p), "accuracy": a["sweep"], "path_accuracy": a["path_sweep"],
                       "kl_to_per_loop": a["kl"]}
  speed = memory_and_speed(cfg, model, params)
  if jax.process_index() == 0:
    with runs.stage("figures and reports"):
      runs.write_json(os.path.join(run_dir, "analysis.json"), {"models": analyses})
      sizes = {s: len(ex["path"]) for s, ex in splits.items()}
      md.write(os.path.join(run_dir, "report.md"), report(cfg, results, speed, sizes, analyses))
  return {"models": results, "policies": speed, "melt_kl": kls}


def analyze_run(cfg: Config, run_dir: str, restored: dict, max_loops: int | None) -> str:
  """`python -m looprec analyze RUN`: every policy evaluated again from the checkpoints into analysis.json."""
  if max_loops is not None:
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, max_loops=max_loops))
  chain_task = tasks.make_task(cfg.data)
  model = cfg.build_model("per_loop", chain_task.vocab.size)
  splits = eval_splits(chain_task, cfg.eval.max_hop, cfg.written)
  analyses = evaluate(cfg, model, {n: p for n, (p, _) in restored.items()}, splits)
  path = os.path.join(run_dir, "analysis.json")
  runs.write_json(path, {"models": analyses})
  return path


def _at(by_split: dict, hop: int, r: int) -> float:
  return by_split[split_name(hop)][str(r)]


def report(cfg: Config, results: dict, speed: dict, sizes: dict, analyses: dict) -> str:
  """Per policy: memory and speed; per policy and hop: final-entity and path accuracy at the trained R and at the
  largest R, the R chosen on validation, the KL to the per-loop teacher, and each halting rule's accuracy and
  loops."""
  r, r_max, k = train_loops(cfg), cfg.eval.max_loops, cfg.data.curriculum.last_hop
  lines = ["# Looped models that generate: cache policies and MELT", "",
           f"A looped block (d = {cfg.model.d_model}, {cfg.model.n_layers} layer(s)) trained with R = {r} to write "
           f"{WHAT_IS_WRITTEN[cfg.written]} of 1..{k}-hop chains ({cfg.train.steps} steps), MELT from it "
           f"({results.get('melt', {}).get('steps', 0)} steps). Held-out chains, greedy decoding; melt decodes with "
           "the MELT student's params, every other policy with the per-loop model's.", "",
           "## Memory and speed", "",
           f"KV-cache bytes per token of context (every cached layer, keys and values) and greedy decode tokens/s at "
           f"R = {r} ({cfg.speed_new} tokens per row, {jax.devices()[0].platform}; speeds are comparable only within "
           "this run).", "",
           "| policy | " + " | ".join(f"bytes/token R={b}" for b in BYTES_AT) + " | "
           + " | ".join(f"tokens/s B={b}" for b in SPEED_BATCHES) + " | B=64 / B=1 |",
           "|---" * (2 + len(BYTES_AT) + len(SPEED_BATCHES)) + "|"]
  for policy, s in speed.items():
    t = s["tokens_per_s"]
    lines.append(f"| {policy} | " + " | ".join(str(s["bytes_per_token"][str(b)]) for b in BYTES_AT) + " | "
                 + " | ".join(f"{t[str(b)]:.0f}" for b in SPEED_BATCHES) + f" | {t['64'] / t['1']:.1f} |")
  lines += ["", "## Accuracy per hop", "",
            f"Final-entity / whole-path accuracy at the trained R = {r} and at R = {r_max} (looping more than in "
            f"training); *val-chosen*: the final-entity test accuracy at the R chosen on the validation split "
            f"(R = 1..{r_max}) and that R; KL: mean KL(per_loop teacher || policy) per written token at R = {r}. "
            f"`*` hops trained on.", "",
            f"| policy | hop | final R={r} | path R={r} | final R={r_max} | path R={r_max} | val-chosen | KL |",
            "|---" * 8 + "|"]
  for policy, res in results.items():
    for hop in range(1, cfg.eval.max_hop + 1):
      chosen = selection.select(res["accuracy"], split_name(hop))
      lines.append(f"| {policy} | {hop}{' *' if hop <= k else ''} | {_at(res['accuracy'], hop, r):.3f} | "
                   f"{_at(res['path_accuracy'], hop, r):.3f} | {_at(res['accuracy'], hop, r_max):.3f} | "
                   f"{_at(res['path_accuracy'], hop, r_max):.3f} | {chosen['test']:.3f} (R={chosen['r']}) | "
                   f"{res['kl_to_per_loop'][str(hop)]:.4f} |")
  lines += ["", "## Adaptive depth while decoding", "",
            f"Final-entity test accuracy / mean loops it was read at, with a halting rule per row and token "
            f"(`decode.generate_halting`, at most R = {r_max}; every token runs the {r_max} loops, so the prompt's "
            f"cached keys and values are those of all {r_max}); rules: `looprec.halting`.", "",
            "| policy | rule | " + " | ".join(f"hop {h}" for h in range(1, cfg.eval.max_hop + 1)) + " |",
            "|---" * (2 + cfg.eval.max_hop) + "|"]
  for policy, a in analyses.items():
    for rule, table in a["halting"].items():
      cells = [f"{table[split_name(h)]['accuracy']:.3f} / {table[split_name(h)]['mean_loops']:.1f}"
               for h in range(1, cfg.eval.max_hop + 1)]
      lines.append(f"| {policy} | {rule} | " + " | ".join(cells) + " |")
  lines += md.small_note(sizes) + [""]
  return "\n".join(lines)
