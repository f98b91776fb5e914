# ---
# jupyter:
#   accelerator: TPU
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Inference-time depth: how many loops does a question need?
# A looped model can run any number of loops at test time. This notebook takes a trained depth-extrapolation
# model and measures accuracy for every loop count in one compiled pass, lets every halting rule decide per
# example when to stop, follows the logit margin far past the useful depth (overthinking), and writes a new
# halting rule in a few lines.
#
# Open on Colab: *File > Upload notebook* (this `.ipynb`), or *File > Open notebook > GitHub* with the
# repository URL; *Runtime > Change runtime type > TPU*.

# %% [markdown]
# ## Setup
# Installs what is missing, nothing on a machine where looprec is already importable (a clone after
# `make .venv/.stamp-dev`). This repository has no public URL: on Colab, upload your copy (zip your clone, upload
# it in the Files pane, then `!unzip -q looprec.zip -d /content`) so that it is at `/content/looprec`, the default
# below, or set `LOOPREC_SOURCE` to a git URL your runtime can clone. On a TPU runtime the `tpu` extra brings the
# TPU build of jax, on a GPU runtime the `cuda` extra the CUDA one; a runtime that had imported its own jax before
# may need *Runtime > Restart session* after the install, then a run from the top.

# %%
LOOPREC_SOURCE = "/content/looprec"  # the path of your uploaded copy, or a git URL ("git+https://.../looprec.git")

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

if importlib.util.find_spec("looprec") is None:
  if "://" not in LOOPREC_SOURCE and not os.path.isdir(LOOPREC_SOURCE):
    raise SystemExit(f"looprec is not installed and LOOPREC_SOURCE={LOOPREC_SOURCE!r} is no folder: upload your copy "
                     "of the repository there (see above) or set LOOPREC_SOURCE to a git URL")
  ON_TPU = (bool(os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_ACCELERATOR_TYPE"))
            or os.path.exists("/dev/accel0") or importlib.util.find_spec("libtpu") is not None)
  EXTRA = "[tpu]" if ON_TPU else "[cuda]" if shutil.which("nvidia-smi") else ""
  SOURCE = LOOPREC_SOURCE if "://" in LOOPREC_SOURCE else pathlib.Path(LOOPREC_SOURCE).resolve().as_uri()
  REQUIREMENT = f"looprec{EXTRA} @ {SOURCE}"
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", REQUIREMENT], check=True)
  importlib.invalidate_caches()
  print("installed", REQUIREMENT)
  if ON_TPU:  # a jax reinstalled under a running kernel may need it
    print("TPU runtime: if importing jax below fails or finds no TPU, Runtime > Restart session, then run from the top")
else:
  print("looprec is importable from", pathlib.Path(importlib.util.find_spec("looprec").origin).parent)

# %% [markdown]
# ## Parameters
# Give `RUN_DIR` (a depth_extrap run folder) to analyze its models; otherwise a model is trained here: the tiny
# `smoke` preset under `SMOKE` (a few CPU minutes, mostly compilation; it barely learns), else `cpu`.

# %% tags=["parameters"]
SMOKE = None
RUN_DIR = None  # e.g. "runs/depth_extrap/latest"
RUNS_ROOT = "runs"
MODEL = "looped"
HALT_CAP = 16  # the most loops a halting rule may run
MARGIN_LOOPS = 50  # how far the overthinking curves go

# %% [markdown]
# ## Devices, and a trained model

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from looprec import HALTING_RULES, experiment, halt, make_mesh, margins, sweep

module = experiment.load("depth_extrap")
# %matplotlib inline

if SMOKE is None:
  SMOKE = jax.default_backend() == "cpu"
if SMOKE:
  MARGIN_LOOPS = min(MARGIN_LOOPS, 24)
mesh = make_mesh()
print("backend:", jax.default_backend(), "| devices:", jax.devices(), "| mesh:", dict(mesh.shape))
if RUN_DIR is None:
  RUN_DIR = experiment.run("depth_extrap", "smoke" if SMOKE else "cpu", runs_root=RUNS_ROOT)
run = experiment.load_run(RUN_DIR)
task, cfg = run.task, run.cfg
model, params = run.model(MODEL), run.params[MODEL]
deepest = min(cfg.eval.max_hop, task.deepest_eval_hop)
splits = {f"{hop} hops": task.eval_split(hop) for hop in range(1, deepest + 1)}
trained = run.meta[MODEL]["stage"]
print(f"{RUN_DIR}: {MODEL}, L = {model.cfg.n_layers}, trained on <= {trained} hops; "
      f"evaluating {', '.join(splits)} ({len(splits['1 hops']['target'])} examples each)")

# %% [markdown]
# ## The sweep: accuracy for R = 1..R_max in one compile
# `sweep` reads the answer after every loop of one scan to R_max, so all loop counts cost one compile and
# R_max loops per batch.

# %% tags=["figure"]
max_loops = max(cfg.eval.max_loops, HALT_CAP)
start = time.perf_counter()
acc = sweep(model, params, splits, max_loops=max_loops)
print(f"sweep of R = 1..{max_loops} on {len(splits)} splits: {time.perf_counter() - start:.1f} s")
fig, ax = plt.subplots(figsize=(7, 4))
colors = plt.cm.viridis(np.linspace(0, 0.95, len(splits)))
for (split, by_r), color in zip(acc.items(), colors):
  ax.plot(range(1, max_loops + 1), [by_r[str(r)] for r in range(1, max_loops + 1)], color=color, label=split,
          lw=2 if int(split.split()[0]) > trained else 1)
ax.set(xlabel="loops R", ylabel="accuracy", ylim=(-0.02, 1.02),
       title=f"{MODEL}: accuracy vs loops (thick: untrained depth)")
ax.legend(fontsize="small", ncol=2)
plt.show()

# %% [markdown]
# ## Every halting rule, side by side
# Each rule stops an example at the first loop where its tests pass (KL between consecutive loops, entropy,
# relative change of the hidden state, a stable argmax), inside a `lax.while_loop` that stops once the whole
# batch has halted (`gate` only for a model with a learned exit gate). The paper's entropy bound (3 nats) was
# set for 200 entities; it is scaled here by ln(#entities) / ln(200). Each rule is one point (mean over the
# splits); the line is fixed R = 1..cap.

# %% tags=["figure"]
n_entities = task.vocab.n_entities
max_entropy = 3.0 * np.log(n_entities) / np.log(200)
policies = [f"{name}:max_entropy={max_entropy:.2f}" if "max_entropy" in defaults else name
            for name, defaults in HALTING_RULES.items() if name != "gate" or model.has_exit_gate]
tables = {p: halt(model, params, splits, p, max_loops=HALT_CAP, fixed=acc) for p in policies}
fixed_R = np.arange(1, HALT_CAP + 1)
fixed_acc = [np.mean([acc[s][str(r)] for s in splits]) for r in fixed_R]
points = {p: (np.mean([row["mean_loops"] for row in table.values()]),
              np.mean([row["accuracy"] for row in table.values()])) for p, table in tables.items()}


def tradeoff_plot(points):
  fig, ax = plt.subplots(figsize=(7, 4.5))
  ax.plot(fixed_R, fixed_acc, color="grey", marker=".", label="fixed R")
  for (label, (loops, accuracy)), marker in zip(points.items(), "osD^vP*X"):
    ax.scatter([loops], [accuracy], marker=marker, s=70, label=label, zorder=3)
  ax.set(xlabel="mean loops per example", ylabel="accuracy (mean over splits)", ylim=(-0.02, 1.02),
         title="halting: accuracy vs compute")
  ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
  plt.show()


tradeoff_plot(points)
for p, (loops, accuracy) in points.items():
  print(f"{p:32s} accuracy {accuracy:.2f} at {loops:.1f} loops on average")

# %% [markdown]
# ## Overthinking: the margin far past the useful depth
# The logit margin (answer logit minus the best other logit) after each loop t = 1..T; dashed lines mark each
# depth's mean first loop with the right answer (t*). A margin that peaks and then falls means more loops
# undo the answer.

# %% tags=["figure"]
curves = margins(model, params, splits, n_loops=MARGIN_LOOPS)
fig, ax = plt.subplots(figsize=(7, 4))
for (split, curve), color in zip(curves.items(), colors):
  ax.plot(range(1, MARGIN_LOOPS + 1), curve["margin"], color=color, label=split)
  if curve["t_star"] is not None:
    ax.axvline(curve["t_star"], color=color, ls="--", lw=0.8)
ax.axhline(0, color="black", lw=0.8)
ax.set(xlabel="loop t", ylabel="mean logit margin", title=f"{MODEL}: margin per loop")
ax.legend(fontsize="small", ncol=2)
plt.show()

# %% [markdown]
# ## A new halting rule in a few lines
# `model.loop_logits` gives the answer logits after every loop (R x B x V) from one forward pass; a rule is a
# function of them. This one stops at the first loop whose top-1 probability reaches `p`. It is evaluated on
# recorded logits (it runs all `HALT_CAP` loops); the built-in rules above run inside the while_loop and really
# stop computing.

# %% tags=["figure"]
def confident(examples, p=0.9):
  """Stop at the first loop whose top-1 probability is >= p (else at the cap): (accuracy, mean loops)."""
  logits_RxBxV = model.loop_logits(params, examples["tokens"], examples["read_pos"], HALT_CAP)
  stop_RxB = (jax.nn.softmax(logits_RxBxV, -1).max(-1) >= p).at[-1].set(True)
  loop_B = jnp.argmax(stop_RxB, 0)  # the first loop that stops, 0-based
  answer_B = jnp.argmax(logits_RxBxV, -1)[loop_B, jnp.arange(loop_B.shape[0])]
  return float(jnp.mean(answer_B == examples["target"])), float(jnp.mean(loop_B + 1))


results = [confident(examples) for examples in splits.values()]
points["confident:p=0.9"] = (np.mean([r[1] for r in results]), np.mean([r[0] for r in results]))
tradeoff_plot(points)
