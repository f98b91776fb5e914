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
# # Depth extrapolation: answer deeper chains by looping longer
# A looped transformer (one block of L layers applied R times with shared weights) is trained on k-hop chains
# `head r1 r2 ... rk -> tail` of up to a few hops, beside a vanilla model of fixed depth. At test time it is
# asked deeper chains than it ever saw: the heatmap of accuracy[hop, R] shows whether more loops buy more hops.
# Then one deep chain, one more loop at a time.
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
# `SMOKE` trains the tiny `smoke` preset (a few CPU minutes, mostly compilation; it is not meant to learn the
# task); otherwise the `cpu` preset, the setting whose results `docs/reproducing.md` reports. `None` picks smoke
# unless an accelerator is attached.

# %% tags=["parameters"]
SMOKE = None
RUNS_ROOT = "runs"  # run folders go to RUNS_ROOT/depth_extrap/<preset>-<time>
OVERRIDES = []  # dotted config overrides, e.g. ["train.steps=5000", "model.d_model=128"]

# %% [markdown]
# ## Devices and the mesh
# looprec shards every batch over one `data` axis of all devices and replicates the parameters: on a TPU with
# 8 cores a batch of 64 is 8 rows per core. (`%matplotlib inline` comes after loading the experiment, whose
# figure module selects matplotlib's headless backend.)

# %%
import json

import jax
import matplotlib.pyplot as plt
import numpy as np

from looprec import experiment, make_mesh

module = experiment.load("depth_extrap")
# %matplotlib inline

if SMOKE is None:
  SMOKE = jax.default_backend() == "cpu"
PRESET = "smoke" if SMOKE else "cpu"
mesh = make_mesh()
print("backend:", jax.default_backend(), "| devices:", jax.devices())
print("mesh:", dict(mesh.shape), "| preset:", PRESET)

# %% [markdown]
# ## The setting
# The resolved config is what the run folder's `config.json` records; any field can be overridden by its
# dotted path in `OVERRIDES`.

# %%
PRESET, cfg = experiment.resolve(module, PRESET, OVERRIDES)
print(f"graph: {cfg.data.n_entities} entities, {cfg.data.n_relations} relations")
curriculum = cfg.data.curriculum
print(f"curriculum: train on {curriculum.first_hop}..{curriculum.last_hop} hops, evaluate 1..{cfg.eval.max_hop} hops "
      f"for R = 1..{cfg.eval.max_loops}")
for name, mrun in cfg.models.items():
  print(f"{name}: L = {mrun.n_layers} layers, R = {mrun.recurrence}, {mrun.steps or cfg.train.steps} steps")
assert cfg.train.batch_size % mesh.size == 0, "the batch must divide over the devices"

# %% [markdown]
# ## Train and evaluate
# `experiment.run` trains every model of the preset (checkpoints, tensorboard), sweeps accuracy over R for every
# hop, and analyzes halting and overthinking; it returns the run folder.

# %%
run_dir = experiment.run("depth_extrap", PRESET, OVERRIDES, runs_root=RUNS_ROOT)
results = json.load(open(f"{run_dir}/results.json"))
print("run folder:", run_dir)

# %% [markdown]
# ## accuracy[hop, R]
# Rows: chain depth (held-out chains); columns: loops at test time. The dashed line is the deepest hop the
# curriculum reached. A model that extrapolates in depth is bright above the line, further right.

# %% tags=["figure"]
def hop(split):
  return 1 if split == "atomic" else int(split.removesuffix("hop_test"))


fig, axes = plt.subplots(1, len(results["models"]), figsize=(4.5 * len(results["models"]), 3.8), squeeze=False)
for ax, (name, res) in zip(axes[0], results["models"].items()):
  splits = sorted((s for s in res["accuracy"] if not s.endswith("_val")), key=hop)  # test splits (val ones choose R)
  loops = sorted(int(r) for r in res["accuracy"][splits[0]])
  grid = np.array([[res["accuracy"][s][str(r)] for r in loops] for s in splits])
  image = ax.imshow(grid, vmin=0, vmax=1, origin="lower", aspect="auto",
                    extent=(loops[0] - 0.5, loops[-1] + 0.5, hop(splits[0]) - 0.5, hop(splits[-1]) + 0.5))
  ax.axhline(res["trained_max_hop"] + 0.5, color="white", ls="--")
  ax.set(title=f"{name} ({res['train_loops']}, L={res['n_layers']})", xlabel="loops R", ylabel="hops")
fig.colorbar(image, ax=axes[0].tolist(), label="accuracy")
plt.show()

# %% [markdown]
# ## One deep chain, one more loop at a time
# `model.loop_logits` reads the answer after every loop of a single forward pass (a scan over depth): R x B x V.
# For one held-out chain deeper than training, each row is the distribution over entities after that loop;
# circles mark the entity after each hop of the chain (numbered), the star the answer.

# %% tags=["figure"]
run = experiment.load_run(run_dir)
task = run.task
model, params = run.model("looped"), run.params["looped"]
deep = cfg.eval.max_hop
chain = task.eval_split(deep)
tokens_1xT, read_pos_1 = chain["tokens"][:1], chain["read_pos"][:1]
logits_RxV = np.asarray(model.loop_logits(params, tokens_1xT, read_pos_1, n_loops=cfg.eval.max_loops))[:, 0]

first_entity = task.vocab.entity_offset
n_entities = task.vocab.n_entities
entity = int(tokens_1xT[0, 0]) - first_entity
path = [entity]
for token in tokens_1xT[0, 1:1 + deep]:
  entity = int(task.perms_MxN[int(token) - task.vocab.relation_offset, entity])
  path.append(entity)
assert path[-1] == int(chain["target"][0]) - first_entity

probs_RxN = np.asarray(jax.nn.softmax(logits_RxV, -1))[:, first_entity:first_entity + n_entities]
fig, ax = plt.subplots(figsize=(8, 4))
ax.imshow(probs_RxN, aspect="auto", origin="lower", cmap="Greys", vmin=0, vmax=1,
          extent=(-0.5, n_entities - 0.5, 0.5, len(probs_RxN) + 0.5))
for k, e in enumerate(path[:-1]):
  ax.scatter([e], [0.2], marker="o", facecolors="none", edgecolors="tab:blue", clip_on=False)
  ax.annotate(str(k), (e, 0.2), textcoords="offset points", xytext=(4, -10), fontsize=7, color="tab:blue",
              annotation_clip=False)
ax.scatter([path[-1]], [0.2], marker="*", s=120, color="tab:red", clip_on=False)
ax.set(xlabel="entity", ylabel="after loop R", title=f"a held-out {deep}-hop chain: p(entity) after each loop")
plt.show()
for r, p_N in enumerate(probs_RxN, 1):
  top = int(p_N.argmax())
  hops = [k for k, e in enumerate(path) if e == top]
  where = f"the entity after hop {', '.join(map(str, hops))}" if hops else "off the chain"
  print(f"R={r:2d}: top-1 entity {top:3d} ({where}), p(answer) = {p_N[path[-1]]:.2f}")

# %% [markdown]
# ## The run folder
# Everything above is also on disk: `config.json`, `results.json`, `report.md`, the figures, orbax checkpoints
# (resume a stopped run with `experiment.run("depth_extrap", resume=run_dir)`) and tensorboard logs. On Colab:
# `%load_ext tensorboard` then `%tensorboard --logdir <the tb folder>`.

# %%
for entry in sorted(os.listdir(run_dir)):
  print(entry)
print("tensorboard logs:", os.path.join(run_dir, "tb"))
