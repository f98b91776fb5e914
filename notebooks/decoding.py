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
# # Looped models that generate: cache policies, memory, and depth per token
# A looped block applied R times keeps, per token, a key/value cache for every loop (`per_loop`: memory grows
# with R). This notebook trains a looped model to write the path of a chain one entity per token, then decodes
# held-out chains under every cache policy: one loop's cache reused (`first_loop`, `last_loop`), Huginn's
# `cycle:k`, and MELT's one gated cache per layer shared across loops (`melt`, trained by distillation from the
# per-loop model). It watches a chain being written as R grows, compares accuracy and memory per policy, and lets
# each token pick its own depth.
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
# Give `RUN_DIR` (a decoding run folder) to use its models; otherwise they are trained here: the tiny `smoke`
# preset under `SMOKE` (a minute on a CPU; it barely learns), else `cpu` (6 to 10 minutes on 2 CPU cores).

# %% tags=["parameters"]
SMOKE = None
RUN_DIR = None  # e.g. "runs/decoding/latest"
RUNS_ROOT = "runs"
MAX_LOOPS = 8  # decode at R = 1..MAX_LOOPS
MEMORY_LOOPS = 32  # how far the memory curves go

# %% [markdown]
# ## Devices, and the trained models
# `per_loop` is the looped model trained with teacher forcing (its decoding keeps a cache per loop: exact);
# `melt` is the same weights plus MELT's learned gates, distilled from it.

# %%
import jax
import matplotlib.pyplot as plt
import numpy as np

from looprec import GenerationTask, bytes_per_token, experiment, generate, generate_halting, path_accuracy

# %matplotlib inline

if SMOKE is None:
  SMOKE = jax.default_backend() == "cpu"
if SMOKE:
  MAX_LOOPS = min(MAX_LOOPS, 4)
print("backend:", jax.default_backend(), "| devices:", jax.devices())
if RUN_DIR is None:
  RUN_DIR = experiment.run("decoding", "smoke" if SMOKE else "cpu", runs_root=RUNS_ROOT)
run = experiment.load_run(RUN_DIR)
cfg = run.cfg
model, params = run.model("per_loop"), run.params
trained_r, hop = cfg.models["per_loop"].rec.loops, cfg.data.curriculum.last_hop
policies = cfg.policies.split(",")
vocab = run.task.vocab
chains = GenerationTask(cfg.data, cfg.written).eval_split(hop)
n_new = chains["path"].shape[1]  # the whole path, or only the final entity (cfg.written)
weights = {p: params["melt" if p == "melt" else "per_loop"] for p in policies}
print(f"{RUN_DIR}: d = {model.cfg.d_model}, L = {model.cfg.n_layers}, trained with R = {trained_r} on paths of "
      f"<= {hop} hops; {len(chains['path'])} held-out {hop}-hop chains; policies {', '.join(policies)}")

# %% [markdown]
# ## One chain, written loop count by loop count
# The prompt is a head entity and `hop` relations; the model writes the entities of the path, one token per
# step, each token computed with R loops of the block over the cache. A mark after each entity says whether it
# is the true one.

# %%
prompt, path = chains["prompt"][:1], chains["path"][0]
print("prompt:", vocab.decode(prompt[0]), "| true path:", vocab.decode(path))
for r in range(1, MAX_LOOPS + 1):
  written = np.asarray(generate(model, params["per_loop"], prompt, n_new, n_loops=r, policy="per_loop"))[0]
  marks = " ".join(f"{vocab.decode([t])}{'+' if t == want else '-'}" for t, want in zip(written, path))
  print(f"R = {r}{' (trained)' if r == trained_r else ''}: {marks}")

# %% [markdown]
# ## Every cache policy: accuracy as R grows
# Final-entity accuracy on the held-out chains (greedy) at R = 1..MAX_LOOPS. `cycle:2` keeps two slots, so it
# equals `per_loop` up to R = 2; `melt` decodes with its distilled gates.

# %% tags=["figure"]
loops = range(1, MAX_LOOPS + 1)
accuracy = {p: [path_accuracy(generate(model, weights[p], chains["prompt"], n_new, n_loops=r, policy=p),
                              chains["path"])["final"] for r in loops] for p in policies}
fig, ax = plt.subplots(figsize=(7, 4))
for (p, acc), marker in zip(accuracy.items(), "osD^v"):
  ax.plot(loops, acc, marker=marker, label=p)
ax.axvline(trained_r, color="grey", ls="--", lw=0.8, label=f"trained R = {trained_r}")
ax.set(xlabel="loops R per token", ylabel="final-entity accuracy", ylim=(-0.02, 1.02),
       title=f"held-out {hop}-hop chains: accuracy per cache policy")
ax.legend(fontsize="small")
plt.show()

# %% [markdown]
# ## Memory: KV-cache bytes per token of context
# From the cache's real layout (`bytes_per_token`): `per_loop` grows linearly with R, `cycle:k` stops growing at
# k slots, `first_loop`, `last_loop` and `melt` stay flat at one cache per layer.

# %% tags=["figure"]
depths = np.arange(1, MEMORY_LOOPS + 1)
memory = {p: [bytes_per_token(model, p, int(r)) for r in depths] for p in policies}
fig, ax = plt.subplots(figsize=(7, 4))
for (p, b), style in zip(memory.items(), ["-", "--", ":", "-.", "-"]):
  ax.plot(depths, b, style, label=p, lw=2 if p == "melt" else 1.2)
ax.set(xlabel="loops R", ylabel="KV bytes per token (log scale)", yscale="log",
       title="cache memory per token of context")
ax.legend(fontsize="small")
plt.show()
for p, b in memory.items():
  print(f"{p:10s} {b[0]:6d} bytes/token at R = 1, {b[-1]:6d} at R = {MEMORY_LOOPS}")

# %% [markdown]
# ## Depth per token: adaptive halting while decoding
# `generate_halting` lets every row stop looping on each token once a halting rule fires (here `kl_entropy`:
# the answer distribution stopped moving and is confident), at most `MAX_LOOPS` loops, batched: rows that halted
# keep their token while the others loop on. It returns the tokens and the loop each one was read at.

# %%
tokens_BxK, loops_BxK = (np.asarray(x) for x in generate_halting(
    model, params["per_loop"], chains["prompt"], n_new, cap=MAX_LOOPS, halt="kl_entropy"))
print("mean loops per written position:", np.round(loops_BxK.mean(0), 2))
print(f"final-entity accuracy {path_accuracy(tokens_BxK, chains['path'])['final']:.2f} with halting, "
      f"{accuracy['per_loop'][trained_r - 1]:.2f} at the trained R = {trained_r}")
