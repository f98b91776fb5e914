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
# # The paper's setting on a TPU, across runtime recycles
# Trains an experiment's `paper` preset (RECIPE: e.g. depth extrapolation with N=200 entities, d=768, a 4-layer
# block looped R ~ clip(Poisson(4), 2, 8), curriculum to 20 hops) on a TPU. Checkpoints go to a persistent folder
# (Google Drive on Colab), and running this notebook again top to bottom after the runtime was recycled resumes
# the unfinished run from its last checkpoint instead of starting over.
#
# Open on Colab: *File > Upload notebook* (this `.ipynb`), or *File > Open notebook > GitHub* with the
# repository URL; *Runtime > Change runtime type > TPU*. Untested on a TPU so far (see the README).

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
# `SMOKE` swaps the paper preset for the tiny `smoke` one and stops its first session after a second of
# training, so that the resume path runs on a CPU. `RUNS_ROOT` must outlive the runtime: on Colab a
# folder of the mounted Drive.

# %% tags=["parameters"]
SMOKE = None
EXPERIMENT = "depth_extrap"  # or "systematicity"
RUNS_ROOT = "/content/drive/MyDrive/looprec-runs"
OVERRIDES = []  # for a new run only; a resumed run keeps its config

# %% [markdown]
# ## A persistent folder, devices, the mesh

# %%
import jax

from looprec import experiment, make_mesh

module = experiment.load(EXPERIMENT)
# %matplotlib inline

if SMOKE is None:
  SMOKE = jax.default_backend() == "cpu"
PRESET = "smoke" if SMOKE else "paper"
if RUNS_ROOT.startswith("/content/drive"):
  try:
    from google.colab import drive
    drive.mount("/content/drive")
  except ImportError:
    RUNS_ROOT = "runs"  # not on Colab: a local folder
    print("not on Colab: run folders go to", RUNS_ROOT)
mesh = make_mesh()
print("backend:", jax.default_backend(), "| devices:", jax.devices(), "| mesh:", dict(mesh.shape))
PRESET, cfg = experiment.resolve(module, PRESET, OVERRIDES)
assert cfg.train.batch_size % mesh.size == 0, "the batch must divide over the devices"
print(f"{EXPERIMENT} / {PRESET}: batch {cfg.train.batch_size} = {cfg.train.batch_size // mesh.size} per device, "
      f"models {', '.join(f'{n} (L={m.n_layers}, {m.recurrence})' for n, m in cfg.models.items())}, "
      f"checkpoint every {cfg.train.checkpoint_every} steps")

# %% [markdown]
# ## Find the run to continue
# The newest run folder of this experiment and preset under `RUNS_ROOT` whose models have not all finished
# training is resumed; otherwise a new one starts.

# %%
import json
import os


def finished(run_dir):
  """Whether every model of a run folder reached its step budget, by the results.json of its last session."""
  path = os.path.join(run_dir, "results.json")
  if not os.path.isfile(path):
    return False
  cfg = experiment.read_run_config(run_dir)[3]
  reached = json.load(open(path))["models"]
  return all(reached.get(name, {}).get("steps", 0) >= (mrun.steps or cfg.train.steps)
             for name, mrun in cfg.models.items())


def unfinished_run(root, name, preset):
  base = os.path.join(root, name)
  folders = sorted(f for f in os.listdir(base) if f.startswith(f"{preset}-")) if os.path.isdir(base) else []
  folders = [os.path.join(base, f) for f in folders if os.path.isfile(os.path.join(base, f, "config.json"))]
  return folders[-1] if folders and not finished(folders[-1]) else None


resume = unfinished_run(RUNS_ROOT, EXPERIMENT, PRESET)
print("resuming" if resume else "starting a new run", resume or f"under {RUNS_ROOT}")

# %% [markdown]
# ## Train (resumable)
# Each checkpoint holds the train state, the data iterator and the curriculum stage, so a resumed run continues
# exactly where the last checkpoint left it (at most `train.checkpoint_every` steps are lost to a recycle). In
# smoke mode a first session is cut after about a second of training (`train.max_minutes`), the way a recycled
# runtime would cut it, and the second session resumes it.

# %%
def session(resume, minutes=0):
  """Trains (a new run, or `resume`) for at most `minutes` of training time in all (0: no limit)."""
  budget = [f"train.max_minutes={minutes}"]
  if resume:
    return experiment.run(EXPERIMENT, resume=resume, overrides=budget)
  return experiment.run(EXPERIMENT, PRESET, OVERRIDES + budget, runs_root=RUNS_ROOT)


def steps(run_dir):
  """model -> the step its training reached, from the run's results.json."""
  results = json.load(open(os.path.join(run_dir, "results.json")))
  return {name: r["steps"] for name, r in results["models"].items()}


if SMOKE and not resume:
  resume = session(None, 0.02)
  print("first session stopped at steps", steps(resume), "| finished:", finished(resume))
run_dir = session(resume)
print("run folder:", run_dir, "| steps", steps(run_dir))
assert finished(run_dir), "a session that returns has trained every model to its budget"

# %% [markdown]
# ## Results so far
# The run's report and figures (each session rewrites them from the models as they stand).

# %% tags=["figure"]
import glob

from IPython.display import Image, Markdown, display

display(Markdown(open(os.path.join(run_dir, "report.md")).read()))
for figure in sorted(glob.glob(os.path.join(run_dir, "*.png"))):
  print(os.path.basename(figure))
  display(Image(figure, width=700))
