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
# # Systematicity: composing facts never composed in training
# A random knowledge graph of atomic facts `(head, relation) -> tail`. Training shows every atomic fact and
# the 2-hop compositions of the *ID* facts; a share of atomic facts is *OOD*: trained alone, never inside a
# composition. A looped model (a block of L layers looped R times) and a vanilla model of the same unrolled
# depth train side by side; their grokking curves (train, ID, OOD and mixed 2-hop probes) are drawn as
# training runs, then the logit lens shows at which loop and layer the answer becomes decodable.
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
# `SMOKE` trains the tiny `smoke` preset (a few CPU minutes, mostly compilation; too short to generalize);
# otherwise `cpu`, the setting of `docs/reproducing.md` (use `PRESET = "cpu_long"` for the OOD stage). `None`
# picks smoke unless an accelerator is attached.

# %% tags=["parameters"]
SMOKE = None
PRESET = None  # None: "smoke" or "cpu" by SMOKE
RUNS_ROOT = "runs"
OVERRIDES = []  # e.g. ["train.steps=50000", "data.atomic_repeats=4"]
LENS_SPLIT = "test_inferred_iid"  # the 2-hop probe split the logit lens figure shows

# %% [markdown]
# ## Devices and the mesh

# %%
import jax
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

from looprec import experiment, logit_lens, make_mesh, make_task, on_eval

module = experiment.load("systematicity")
# %matplotlib inline

if SMOKE is None:
  SMOKE = jax.default_backend() == "cpu"
PRESET = PRESET or ("smoke" if SMOKE else "cpu")
mesh = make_mesh()
print("backend:", jax.default_backend(), "| devices:", jax.devices())
print("mesh:", dict(mesh.shape), "| preset:", PRESET)
PRESET, cfg = experiment.resolve(module, PRESET, OVERRIDES)
assert cfg.train.batch_size % mesh.size == 0, "the batch must divide over the devices"

# %% [markdown]
# ## The graph and its ID / OOD split at a glance
# Left: every atomic fact as a cell (head, tail), blue for ID, orange for OOD. Right: the training rows and
# the probe splits. `test_inferred_ood_first` / `_second` are compositions whose first / second hop is OOD.

# %% tags=["figure"]
task = make_task(cfg.data)
first_entity = task.vocab.entity_offset
atomic = task.train["hop"] == 1
heads = task.train["tokens"][atomic, 0] - first_entity
tails = task.train["target"][atomic] - first_entity
ood_probe = task.probes["ood_atomic"]
ood_pairs = set(zip(ood_probe["tokens"][:, 0].tolist(), ood_probe["tokens"][:, 1].tolist()))
is_ood = np.array([(h, r) in ood_pairs for h, r in zip(task.train["tokens"][atomic, 0].tolist(),
                                                         task.train["tokens"][atomic, 1].tolist())])

n = task.vocab.n_entities
graph_NxN = np.zeros((n, n))
graph_NxN[heads[~is_ood], tails[~is_ood]] = 1
graph_NxN[heads[is_ood], tails[is_ood]] = 2
fig, (ax_graph, ax_sizes) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1, 1.3]})
ax_graph.imshow(np.ma.masked_equal(graph_NxN, 0), cmap=plt.matplotlib.colors.ListedColormap(["tab:blue", "tab:orange"]),
                vmin=1, vmax=2, interpolation="nearest")
ax_graph.set(title=f"atomic facts: {(~is_ood).sum()} ID (blue), {is_ood.sum()} OOD (orange)", xlabel="tail entity",
             ylabel="head entity")
sizes = {"train: atomic rows": int(atomic.sum()), "train: 2-hop rows": int((task.train["hop"] == 2).sum()),
         **{f"probe: {name}": len(ex["target"]) for name, ex in task.probes.items()}}
ax_sizes.barh(list(sizes), list(sizes.values()), color=["grey"] * 2 + ["tab:green"] * len(task.probes))
ax_sizes.invert_yaxis()
ax_sizes.set(xscale="log", xlabel="examples", title="training rows and probe splits")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Training, with the grokking curves as they come in
# `on_eval` calls a function after every evaluation during training (every `train.eval_every` steps) with the
# model's name, the step and each probe split's accuracy at the training R; here it redraws the figure.
# Memorisation shows first (`train_inferred`), then ID generalization, then (if ever) OOD.

# %% tags=["figure"]
curves = {name: {} for name in cfg.models}
fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), squeeze=False, sharey=True)
handle = display(fig, display_id=True)


def redraw(name, step, accuracy):
  for split, acc in accuracy.items():
    curves[name].setdefault(split, []).append((step, acc))
  for ax, (model_name, by_split) in zip(axes[0], curves.items()):
    ax.clear()
    for split, points in by_split.items():
      steps, accs = np.array(points).T
      ax.plot(steps, accs, marker=".", label=split, ls="--" if split.endswith(("_first", "_second")) else "-")
    ax.set(title=model_name, xscale="log", xlabel="training step", ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    if by_split:
      ax.legend(fontsize="small", loc="upper left")
  axes[0][0].set_ylabel("accuracy")
  handle.update(fig)


with on_eval(redraw):
  run_dir = experiment.run("systematicity", PRESET, OVERRIDES, runs_root=RUNS_ROOT)
plt.close(fig)
print("run folder:", run_dir)

# %% [markdown]
# ## Logit lens: per loop and per layer
# The hidden state after every layer of every loop, read through the final norm and the tied head: how often
# the answer (and the bridge entity, the tail of the first hop) is the top-1 token. Bridge at r1 is read at the
# first relation's token, where a causal model answers the first hop. Each panel is loops x layers; the
# vanilla model is one loop of all its layers.

# %% tags=["figure"]
run = experiment.load_run(run_dir)
readings = ("answer", "bridge", "bridge_at_r1")
fig, axes = plt.subplots(len(cfg.models), len(readings), figsize=(4 * len(readings), 2.8 * len(cfg.models)),
                         squeeze=False, layout="constrained")
for row, name in zip(axes, cfg.models):
  model = run.model(name)
  loops = run.cfg.models[name].rec.max_loops  # the training R
  lens = logit_lens(model, run.params[name], {LENS_SPLIT: task.probes[LENS_SPLIT]}, n_loops=loops)[LENS_SPLIT]
  for ax, reading in zip(row, readings):
    top1_RxL = np.array(lens[reading]["top1_by_layer"])
    image = ax.imshow(top1_RxL, vmin=0, vmax=1, origin="lower", aspect="auto",
                      extent=(0.5, top1_RxL.shape[1] + 0.5, 0.5, top1_RxL.shape[0] + 0.5))
    ax.set(title=f"{name}: {reading}", xlabel="layer", ylabel="loop", xticks=range(1, top1_RxL.shape[1] + 1),
           yticks=range(1, top1_RxL.shape[0] + 1))
fig.colorbar(image, ax=axes.ravel().tolist(), label=f"top-1 rate on {LENS_SPLIT}")
plt.show()

# %% [markdown]
# ## The run folder
# `results.json` holds the curves, each split's accuracy for every R, and the lens; `grokking.png`,
# `logit_lens.png` and `report.md` summarise them; `tb/` holds the tensorboard logs (on Colab:
# `%load_ext tensorboard`, `%tensorboard --logdir <the tb folder>`).

# %%
import os

for entry in sorted(os.listdir(run_dir)):
  print(entry)
print("tensorboard logs:", os.path.join(run_dir, "tb"))
