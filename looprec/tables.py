"""Results tables in the docs, generated from the summaries in results/ (`looprec.summary`).

    python -m looprec tables            # rewrites every marked table of DOCS from results/
    python -m looprec tables --check    # exit 1, naming each table that differs; nothing written
    make tables

A table is the text between `<!-- table: ID -->` and `<!-- /table -->` in a doc; TABLES maps ID to (summary
file in results/, renderer). Adding a table: a summary file, one line in TABLES, and the two markers in a doc.
Renderers: depth_accuracy (hop x model, val-chosen R beside the oracle), depth_by_model (model x hop, for many
models), depth_halting ((model, policy) x hop), systematicity (split x model), systematicity_lens ((model, reading)
x layer), depth_study ((cell, model) x hop of a grid study), decoding_costs (cache policy x memory, speed, KL),
decoding_paired (cache policy x hop against the per-loop teacher, chain by chain); functools.partial picks models,
hops or the split.
A table of several summaries (a tuple of files: run_times, the measured wall time of each preset; length_gen_papers,
each task beside its paper) gets a list of (summary, file). A table with no summary file (None) is rendered from
the code: `deviations/<experiment>_<preset>`, a preset's computed deviations from the paper preset.
A missing or malformed summary, or an unknown ID, is a ConfigError naming the file and the field.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re

from looprec.files import write_text_atomic
from looprec.config import ConfigError, choices
from looprec.summary import TEACHER, aggregate

DOCS = ("README.md", "docs/reproducing.md")
RESULTS = "results"
MARKER = re.compile(r"(<!-- table: (\S+) -->\n)(.*?)(<!-- /table -->)", re.S)


def need(obj, where: str, *keys):
  """obj[k0][k1]...; ConfigError naming the file and the dotted field when one is missing."""
  for i, k in enumerate(keys):
    try:
      obj = obj[k]
    except (KeyError, IndexError, TypeError):
      raise ConfigError(f"{where}: no field {'.'.join(map(str, keys[:i + 1]))!r}") from None
  return obj


def stat(s, fmt: str = ".2f") -> str:
  """`mean (min–max)` of an aggregate, `mean` where min = max, `—` for none."""
  if s is None or isinstance(s, dict) and s.get("mean") is None:
    return "—"
  if not isinstance(s, dict):
    return format(s, fmt)
  text, low, high = (format(s[k], fmt) for k in ("mean", "min", "max"))
  return text if low == high else f"{text} ({low}–{high})"


def r_range(s) -> str:
  """`R=a` or `R=a–b` of an aggregate R."""
  if s is None or isinstance(s, dict) and s.get("mean") is None:
    return "R —"
  lo, hi = (s["min"], s["max"]) if isinstance(s, dict) else (s, s)
  return f"R={lo}" if lo == hi else f"R={lo}–{hi}"


def chosen(test, r) -> str:
  """`accuracy, R=...` at the validation-chosen R, `—` where there is no validation split."""
  return "—" if r is None else f"{stat(test)}, {r_range(r)}"


def provenance(summary: dict, where: str) -> str:
  """The line under each table: the command per seed, n seeds, commits, machine, wall time."""
  seeds = need(summary, where, "seeds")
  train = need(summary, where, "commands", "train")
  per_run = [" ".join(need(summary, where, "runs", i, "seed_overrides")) for i in range(len(seeds))]
  base = train[0].removesuffix(" " + per_run[0]).strip()
  varied = ", ".join(f"`{p}`" if p else "the preset's seeds" for p in per_run)
  commit = need(summary, where, "commit")
  machine = need(summary, where, "machine")
  return (f"From `{where}`: `{base}` with {varied} (n = {len(seeds)} seed{'s' * (len(seeds) != 1)}), then "
          f"`python -m looprec analyze RUN`; looprec {_commits(commit.get('train'), seeds)} "
          f"(training), {_commits(commit.get('analysis'), seeds)} (analysis); {_machines(machine)}; wall time per seed "
          f"{stat(need(summary, where, 'aggregate', 'wall_seconds'), '.0f')} s. Mean (min–max) over seeds.")


def _short(commit) -> str:
  if not commit:
    return "unknown"
  return commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")


def _machines(machine) -> str:
  """`platform, n CPUs`, for each distinct machine."""
  each = machine if isinstance(machine, list) else [machine]
  return " / ".join(dict.fromkeys(f"{m.get('platform')}, {m.get('cpu_count')} CPUs" for m in each))


def _commits(commit, seeds: list) -> str:
  """One short commit, or each commit with the seeds it trained where they differ."""
  if not isinstance(commit, list):
    return _short(commit)
  by = {}
  for c, seed in zip(commit, seeds):
    by.setdefault(_short(c), []).append(str(seed))
  return ", ".join(f"{c} (seed{'s' * (len(s) > 1)} {', '.join(s)})" for c, s in by.items())


def _models(summary: dict, where: str):
  """(model names, get: keys under aggregate.models -> value, naming the field when missing)."""
  if need(summary, where, "schema") != 1:
    raise ConfigError(f"{where}: field 'schema' is {summary['schema']!r}, this code reads 1")
  return list(need(summary, where, "aggregate", "models")), lambda *k: need(summary, where, "aggregate", "models", *k)


def depth_accuracy(summary: dict, where: str, models: tuple = ()) -> str:
  """hop x model: the test accuracy at the R chosen on validation beside the oracle."""
  names, get = _models(summary, where)
  names = list(models) or names
  hops = list(get(names[0], "hops"))
  lines = ["| hop | " + " | ".join(f"{n}: test at val-chosen R | {n}: oracle" for n in names) + " |",
           "|---" * (1 + 2 * len(names)) + "|"]
  for hop in hops:
    cells = []
    for n in names:
      trained = get(n, "trained_max_hop")
      star = " *" if int(hop) <= (trained["min"] if isinstance(trained, dict) else trained) else ""
      cells += [chosen(get(n, "hops", hop, "test"), get(n, "hops", hop, "r")) + star,
                f"{stat(get(n, 'hops', hop, 'oracle'))}, {r_range(get(n, 'hops', hop, 'oracle_r'))}"]
    lines.append(f"| {hop} | " + " | ".join(cells) + " |")
  r_max = need(summary, where, "max_loops")
  return "\n".join(lines + ["", provenance(summary, where) + " *Test at val-chosen R*: the test accuracy at the R "
                            f"chosen on the validation split (argmax over R = 1..{r_max}, ties to the smallest R), "
                            "with that R's range over seeds; *oracle*: the best test accuracy over R, an upper "
                            "bound. `*`: hops every seed's model trained on."])


def depth_by_model(summary: dict, where: str, hops: tuple = ()) -> str:
  """model x hop (for many models, e.g. variants): `test at val-chosen R [oracle]` per cell."""
  names, get = _models(summary, where)
  hops = list(hops) or list(get(names[0], "hops"))
  lines = ["| model | " + " | ".join(f"hop {h}" for h in hops) + " |", "|---" * (1 + len(hops)) + "|"]
  for n in names:
    cells = [f"{chosen(get(n, 'hops', h, 'test'), get(n, 'hops', h, 'r'))} "
             f"[{stat(get(n, 'hops', h, 'oracle'))}, {r_range(get(n, 'hops', h, 'oracle_r'))}]" for h in hops]
    lines.append(f"| {n} | " + " | ".join(cells) + " |")
  return "\n".join(lines + ["", provenance(summary, where) + " Each cell: the test accuracy at the R chosen on the "
                            f"validation split (argmax over R = 1..{need(summary, where, 'max_loops')}, ties to the "
                            "smallest R) and that R's range over seeds; in brackets the oracle, the best test accuracy "
                            "over R (an upper bound)."])


def depth_halting(summary: dict, where: str, models: tuple = ()) -> str:
  """(model, policy) x hop: halting accuracy / mean loops."""
  names, get = _models(summary, where)
  names = list(models) or names
  hops = list(get(names[0], "hops"))
  lines = ["| model | policy | " + " | ".join(f"hop {h}" for h in hops) + " |", "|---" * (2 + len(hops)) + "|"]
  for n in names:
    for pol in get(n, "halting"):
      cells = [f"{stat(get(n, 'halting', pol, h, 'accuracy'))} / "
               f"{stat(get(n, 'halting', pol, h, 'mean_loops'), '.1f')}" for h in hops]
      lines.append(f"| {n} | {pol} | " + " | ".join(cells) + " |")
  return "\n".join(lines + ["", provenance(summary, where) + " Each cell: accuracy / mean loops."])


def systematicity(summary: dict, where: str) -> str:
  """split x model: final accuracy at the training R, the first step >= 0.9, and the held-out halves' test accuracy
  at the R chosen on their validation halves beside the oracle."""
  names, get = _models(summary, where)
  lines = ["| split | " + " | ".join(f"{n}: final | {n}: >= 0.9 at step | {n}: test at val-chosen R [oracle]"
                                      for n in names) + " |", "|---" * (1 + 3 * len(names)) + "|"]
  for split in get(names[0], "final"):
    cells = []
    for n in names:
      step = get(n, "stage_steps").get(split)
      never = step.get("missing", 0) if isinstance(step, dict) else 0
      cells += [stat(get(n, "final", split)),
                (stat(step, ".0f") if step is not None else "never") + (f" ({never} never)" if never else ""),
                f"{chosen(get(n, 'selected', split, 'test'), get(n, 'selected', split, 'r'))} "
                f"[{stat(get(n, 'selected', split, 'oracle'))}, {r_range(get(n, 'selected', split, 'oracle_r'))}]"
                if split in get(n, "selected") else "—"]
    lines.append(f"| {split} | " + " | ".join(cells) + " |")
  return "\n".join(lines + ["", provenance(summary, where) + " *final*: accuracy at the training R after the last "
                            "step; *>= 0.9 at step*: the first evaluated step at or above 0.9 (training curves); "
                            "held-out splits are the even rows of each probe split, R "
                            f"(1..{need(summary, where, 'max_loops')}) is chosen on the odd rows."])


def systematicity_lens(summary: dict, where: str, split: str = "test_inferred_iid") -> str:
  """(model, reading) x unrolled layer: the logit lens's top-1 rate on one held-out split."""
  names, get = _models(summary, where)
  width = max(len(get(n, "lens", split, "answer")) for n in names)
  lines = ["| model | reading | " + " | ".join(f"after {i}" for i in range(1, width + 1)) + " |",
           "|---" * (2 + width) + "|"]
  for n in names:
    loops = get(n, "train_loops")
    for reading, by_layer in get(n, "lens", split).items():
      cells = [stat(by_layer.get(str(i))) for i in range(1, width + 1)]
      lines.append(f"| {n} (L={stat(get(n, 'n_layers'), '.0f')}, {loops}) | {reading} | " + " | ".join(cells) + " |")
  return "\n".join(lines + ["", provenance(summary, where) + f" Each cell: the top-1 rate on `{split}` of the entity "
                            "read through the final norm and the tied head after the n-th layer of the unrolled "
                            "depth (loop after loop), at the training R: *answer* and *bridge* at the answer "
                            "position, *bridge_at_r1* at the first relation's token."])


def depth_study(summary: dict, where: str) -> str:
  """(cell, model) x (atomic, hop k, k+1..k+3) of a grid study (benchmarks/depth_extrap_full_attention.py): the steps
  trained, the curriculum gate's last check, the training loss at step 0 and over the last 250 steps, and per hop the test accuracy at the
  validation-chosen R beside the oracle."""
  lines = ["| cell | model | steps | gate at last check | training loss: step 0 → last 250 steps | atomic | hop k (trained) "
           "| k+1 | k+2 | k+3 |", "|---" * 10 + "|"]
  for name, cell in need(summary, where, "cells").items():
    k = need(cell, f"{where}: cells.{name}", "k")
    for model, m in need(cell, f"{where}: cells.{name}", "models").items():
      at = f"{where}: cells.{name}.models.{model}"
      gates = {split: points[-1] for split, points in need(m, at, "curves", "gate").items() if points}
      gate = ", ".join(f"{split} {a:.2f}" for split, (_, a) in gates.items()) or "—"
      gate += f" (step {max(s for s, _ in gates.values())})" if gates else ""
      loss = need(m, at, "curves", "loss")
      losses = f"{loss[0][1]:.2f} → {loss[-1][1]:.2f}" if loss else "—"
      hops = [need(m, at, "hops", str(h)) for h in (1, k, k + 1, k + 2, k + 3)]
      cells = [f"{chosen(h['test'], h['r'])} [{stat(h['oracle'])}]" for h in hops]
      lines.append(f"| {name} | {model} | {need(m, at, 'steps')} | {gate} | {losses} | " + " | ".join(cells) + " |")
  commit = need(summary, where, "commit")
  return "\n".join(lines + ["", f"From `{where}`: `{need(summary, where, 'command')}`, looprec "
                            f"{_short(commit.get('train'))} (training), {_machines(need(summary, where, 'machine'))}. "
                            "Every cell is the depth_extrap paper preset with the summary's `cpu_size` overrides and "
                            "its own; hops beyond k never appear in training. *gate*: the curriculum check's held-out "
                            "accuracy of the stage at the training R; each hop: the test accuracy at the R chosen on "
                            f"the validation split (R = 1..2(k + 3)), in brackets the oracle (the best test accuracy "
                            "over R, an upper bound)."])


def decoding_costs(summary: dict, where: str) -> str:
  """cache policy x (KV bytes per token at R = 4..32, decode tokens/s at batch 1 and 64 and their ratio, KL to
  the per-loop teacher on the trained hops): what each policy of the decoding experiment costs."""
  names, get = _models(summary, where)
  policies = need(summary, where, "aggregate", "policies")
  r_at = list(need(policies, where, names[0], "bytes_per_token"))
  lines = ["| policy | " + " | ".join(f"bytes/token R={r}" for r in r_at) + " | tokens/s B=1 | tokens/s B=64 | "
           "B=64 / B=1 | KL to per_loop, trained hops |", "|---" * (5 + len(r_at)) + "|"]
  for n in names:
    at = f"{where}: aggregate.policies.{n}"
    speed = [need(r, where, "policies", n, "tokens_per_s") for r in need(summary, where, "runs")]
    ratio = aggregate([s["64"] / s["1"] for s in speed])
    trained = get(n, "trained_max_hop")
    kl = [get(n, "kl", h)["mean"] for h in get(n, "kl") if int(h) <= trained["min"]]
    lines.append(f"| {n} | " + " | ".join(stat(need(policies, at, n, "bytes_per_token", r), ".0f") for r in r_at)
                 + f" | {stat(need(policies, at, n, 'tokens_per_s', '1'), '.0f')} | "
                 f"{stat(need(policies, at, n, 'tokens_per_s', '64'), '.0f')} | {stat(ratio, '.1f')} | "
                 f"{sum(kl) / len(kl):.3f} |")
  return "\n".join(lines + ["", provenance(summary, where) + " Bytes: the KV cache per token of context, every "
                            "cached layer, keys and values (`decode.bytes_per_token`); tokens/s: greedy decoding at "
                            "the training R on this machine, comparable within a run only; KL: the mean over the "
                            "trained hops of KL(per_loop teacher || policy) per written token at the training R."])


def mcnemar_p(only_a: int, only_b: int) -> float:
  """Exact two-sided McNemar p-value: the chance of a split of the discordant pairs at least this uneven when
  either model is as likely to be the one right (a binomial test at 1/2)."""
  n, k = only_a + only_b, min(only_a, only_b)
  return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0


def decoding_paired(summary: dict, where: str, beyond: bool = False) -> str:
  """policy x trained hop (beyond: every hop paired in every run): each policy against the per-loop teacher on the
  same test chains, pooled over seeds (`summary._paired`): the accuracy difference with a 95% interval, the chains
  only one of them gets right, and McNemar's exact p."""
  names, _ = _models(summary, where)
  runs = need(summary, where, "runs")
  trained = min(int(need(r, where, "models", TEACHER, "trained_max_hop")) for r in runs)
  paired = [set(need(r, where, "models", n, "paired")) for r in runs for n in names if n != TEACHER]
  hops = sorted(set.intersection(*paired), key=int) if beyond else [str(h) for h in range(1, trained + 1)]
  lines = ["| policy | " + " | ".join(f"hop {h}" for h in hops) + " |", "|---" * (1 + len(hops)) + "|"]
  for n in (n for n in names if n != TEACHER):
    cells = []
    for h in hops:
      pairs = [need(r, where, "models", n, "paired", h) for r in runs]
      total, a, b = (sum(p[k] for p in pairs) for k in ("n", "only_teacher", "only_model"))
      diff, half = (b - a) / total, 1.96 * math.sqrt(max(a + b - (b - a) ** 2 / total, 0)) / total
      cells.append(f"{diff:+.2f} ({diff - half:+.2f} to {diff + half:+.2f}), {a} / {b}, p = {mcnemar_p(a, b):.2g}")
    lines.append(f"| {n} | " + " | ".join(cells) + " |")
  return "\n".join(lines + ["", provenance(summary, where) + " Each cell, over the test chains of every seed "
                            f"pooled: the policy's final-entity accuracy minus the {TEACHER} teacher's on the same "
                            "chains, each at its own R chosen on validation, with a 95% interval (normal "
                            "approximation of the paired difference); the chains only the teacher / only the policy "
                            "gets right; McNemar's exact two-sided p (could the split of those chains be chance?)."])


def preset_deviations(name: str, preset: str) -> str:
  """The fields where an experiment's preset differs from its paper preset, with their reasons (`experiment.
  deviations_text`)."""
  from looprec import experiment  # pylint: disable=import-outside-toplevel
  module = experiment.load(name)
  return experiment.deviations_text(module.PRESETS[preset](), experiment.paper_preset(module))


def run_times(summaries: list) -> str:
  """command x (seeds, wall time per seed, per-model training time, machine): what a full preset costs."""
  lines = ["| command | seeds | wall time per seed | training time per model | machine, looprec |", "|---|---|---|---|---|"]
  for summary, where in summaries:
    names, get = _models(summary, where)
    wall = need(summary, where, "aggregate", "wall_seconds")
    train = ", ".join(f"{n} {stat(get(n, 'train_seconds'), '.0f')} s" for n in names
                      if stat(get(n, "train_seconds")) != "—")  # not the training-free entries
    lines.append(f"| `make experiment NAME={need(summary, where, 'experiment')} PRESET={need(summary, where, 'preset')}` "
                 f"| {len(need(summary, where, 'seeds'))} | {stat(wall, '.0f')} s ({wall['mean'] / 60:.0f} min) | "
                 f"{train} | {_machines(need(summary, where, 'machine'))}, "
                 f"{_commits(need(summary, where, 'commit').get('train'), need(summary, where, 'seeds'))} |")
  return "\n".join(lines + ["", "From " + ", ".join(f"`{w}`" for _, w in summaries) + ": mean (min–max) over seeds; "
                                 "each seed's run on its own, as `make experiment` runs it."])


# What the papers report for a task, beside looprec's length_gen table (`length_gen_papers`).
PAPERS = {
    "parity": ("Fan et al. 2024", "lengths 1–20 (curriculum), R = n per example, a looped GPT-2 decoder block "
               "with input injection", "near-perfect parity up to about twice the trained length (~40, as issue 21 "
               "reads their figure)"),
    "copy": ("Fan et al. 2024", "lengths 1–20 (curriculum), R = n per example, a 2-layer looped GPT-2 block, d 256, "
             "NoPE, 100,000 steps", "near-perfect copy up to about 35 (as issue 21 reads their figure)"),
    "addition": ("Fan et al. 2024", "binary, 1–20 bits (curriculum), R = n per example, a 3-layer looped GPT-2 block, "
                 "d 256, NoPE, 100,000 steps", "near-perfect addition up to about 30 bits (as issue 21 reads their "
                 "figure)"),
    "p_hop": ("Saunshi et al. 2025", "p = 16 over sequences of 256 symbols, a 1-layer block looped 6 times",
              "99.9% at p = 16 (in distribution; no larger p)"),
}


def length_gen_papers(summaries: list) -> str:
  """task x (looprec's setup and budget, looped and vanilla accuracy at the deepest trained difficulty and at 1.5
  times it, the paper's setup and figure)."""
  from looprec import experiment  # pylint: disable=import-outside-toplevel
  lines = ["| task | looprec: models, budget | trained d | looped at d / 1.5 d | vanilla at d / 1.5 d | paper: setup "
           "| paper: reported |", "|---|---|---|---|---|---|---|"]
  for summary, where in summaries:
    names, get = _models(summary, where)
    cfg = experiment.load(need(summary, where, "experiment")).PRESETS[need(summary, where, "preset")]()
    d, task = cfg.data.train_max, cfg.data.name
    ood = str(int(1.5 * d))
    models = "; ".join(f"{n}: {cfg.models[n].n_layers} layer(s), R {get(n, 'train_loops')}" for n in names)
    budget = ", ".join(f"{n} {stat(get(n, 'steps'), '.0f')} steps / {stat(get(n, 'train_seconds'), '.0f')} s"
                       for n in names)
    acc = {n: " / ".join(chosen(get(n, "hops", h, "test"), get(n, "hops", h, "r")) for h in (str(d), ood))
           for n in names}
    paper, setup, figure = PAPERS[task]
    label = task + (", the parity so far supervised at every bit" if cfg.data.running_parity else "")
    lines.append(f"| {label} (`{where}`) | d_model {cfg.model.d_model}, {models}; {budget} | {cfg.data.train_min}.."
                 f"{d} | {acc['looped']} | {acc['vanilla']} | {paper}: {setup} | {figure} |")
  return "\n".join(lines + ["", "Accuracy: the test accuracy at the R chosen on the validation split (mean (min–max) "
                            "over seeds, with that R). The papers' models are larger and trained far longer; their "
                            "figures are quoted from the papers, not re-measured."])


TABLES = {
    "depth_extrap_smoke/accuracy": ("depth_extrap_smoke.json", depth_accuracy),
    "depth_extrap_smoke/halting": ("depth_extrap_smoke.json", functools.partial(depth_halting, models=("looped",))),
    "depth_extrap_cpu/accuracy": ("depth_extrap_cpu.json", depth_accuracy),
    "depth_extrap_cpu/halting": ("depth_extrap_cpu.json", functools.partial(depth_halting, models=("looped",))),
    "systematicity_cpu/accuracy": ("systematicity_cpu.json", systematicity),
    "systematicity_cpu/lens": ("systematicity_cpu.json", systematicity_lens),
    "systematicity_cpu/lens_ood": ("systematicity_cpu.json",
                                   functools.partial(systematicity_lens, split="test_inferred_ood")),
    "length_gen_cpu/accuracy": ("length_gen_cpu.json", depth_accuracy),
    "systematicity_cpu_long/accuracy": ("systematicity_cpu_long.json", systematicity),
    "systematicity_cpu_long/lens_ood": ("systematicity_cpu_long.json",
                                        functools.partial(systematicity_lens, split="test_inferred_ood")),
    "variants_cpu/accuracy": ("variants_cpu.json", depth_by_model),
    "depth_extrap_full_attention": ("depth_extrap_full_attention.json", depth_study),
    "decoding_cpu/accuracy": ("decoding_cpu.json", depth_by_model),
    "decoding_cpu/costs": ("decoding_cpu.json", decoding_costs),
    "decoding_cpu/paired": ("decoding_cpu.json", decoding_paired),
    "decoding_cpu_implicit/accuracy": ("decoding_cpu_implicit.json", depth_by_model),
    "decoding_cpu_implicit/paired": ("decoding_cpu_implicit.json", functools.partial(decoding_paired, beyond=True)),
    "decoding_cpu_implicit/halting": ("decoding_cpu_implicit.json",
                                      functools.partial(depth_halting, models=("per_loop", "melt"))),
    "variants_cpu/halting": ("variants_cpu.json", functools.partial(depth_halting, models=("exit_gate", "looped"))),
    **{f"deviations/{name}_{preset}": (None, functools.partial(preset_deviations, name, preset))
       for name, preset in (("depth_extrap", "cpu"), ("depth_extrap", "cpu_faithful"), ("systematicity", "cpu"),
                            ("systematicity", "cpu_long"), ("variants", "cpu"))},
    "length_gen/papers": (("length_gen_cpu.json", "length_gen_cpu_per_example.json", "length_gen_cpu_running.json",
                           "length_gen_cpu_p_hop.json", "length_gen_cpu_copy.json", "length_gen_cpu_addition.json"),
                          length_gen_papers),
    "length_gen_cpu_per_example/accuracy": ("length_gen_cpu_per_example.json", depth_accuracy),
    "length_gen_cpu_running/accuracy": ("length_gen_cpu_running.json", depth_accuracy),
    "length_gen_cpu_p_hop/accuracy": ("length_gen_cpu_p_hop.json", depth_accuracy),
    "length_gen_cpu_copy/accuracy": ("length_gen_cpu_copy.json", depth_accuracy),
    "length_gen_cpu_addition/accuracy": ("length_gen_cpu_addition.json", depth_accuracy),
    "run_times": (("depth_extrap_cpu.json", "systematicity_cpu.json", "variants_cpu.json"), run_times),
}


def render(table_id: str, root: str = ".") -> str:
  """The markdown of one registered table from its summary file."""
  if table_id not in TABLES:
    raise ConfigError(f"table {table_id!r} is not in looprec.tables.TABLES (have {choices(table_id, TABLES)})")
  names, renderer = TABLES[table_id]
  if names is None:
    return renderer()
  if isinstance(names, tuple):
    return renderer([_load(name, table_id, root) for name in names])
  return renderer(*_load(names, table_id, root))


def _load(name: str, table_id: str, root: str) -> tuple[dict, str]:
  """(a summary, its path under results/) for a table."""
  where = os.path.join(RESULTS, name)
  path = os.path.join(root, where)
  if not os.path.isfile(path):
    raise ConfigError(f"{where}: missing (needed by table {table_id!r})")
  try:
    with open(path) as f:
      return json.load(f), where
  except ValueError as e:
    raise ConfigError(f"{where}: not JSON ({e})") from None


def regenerate(text: str, doc: str, root: str = ".") -> tuple[str, list[str]]:
  """(the doc with every marked table rendered, the IDs of the tables that changed)."""
  changed = []

  def fill(m):
    try:
      body = render(m.group(2), root) + "\n"
    except ConfigError as e:
      raise ConfigError(f"{doc}: {e}") from None
    if body != m.group(3):
      changed.append(m.group(2))
    return m.group(1) + body + m.group(4)

  return MARKER.sub(fill, text), changed


def update_docs(root: str = ".", check: bool = False) -> list[str]:
  """Regenerates (or, with check, compares) the tables of every doc; returns `doc: table ID` of each that
  differed. Every table is rendered before any doc is written: a bad summary leaves the docs as they were."""
  differing, rewrites = [], {}
  for doc in DOCS:
    path = os.path.join(root, doc)
    with open(path) as f:
      text, changed = regenerate(f.read(), doc, root)
    differing += [f"{doc}: {t}" for t in changed]
    if changed:
      rewrites[path] = text
  for path, text in rewrites.items() if not check else ():
    write_text_atomic(path, text)
  return differing
