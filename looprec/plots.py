"""Figures written into a run folder (matplotlib, no display needed)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from looprec import runs  # pylint: disable=wrong-import-position
from looprec.data import hop_of  # pylint: disable=wrong-import-position
from looprec.selection import is_val  # pylint: disable=wrong-import-position


COLUMNS = 4  # panels per row; more models wrap to further rows


def panels(n: int, width: float, height: float, **kw):
  """(figure, the first n axes of a grid of at most COLUMNS per row); the unused cells are hidden."""
  cols, rows = min(n, COLUMNS), -(-n // COLUMNS)
  fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, **kw)
  flat = list(axes.ravel())
  for ax in flat[n:]:
    ax.set_visible(False)
  return fig, flat[:n]


def _save(fig, path: str):
  with runs.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
  plt.close(fig)


def _hops(n: int) -> str:
  return f"{n} hop" + "s" * (n != 1)


def accuracy_grid(accuracy: dict):
  """accuracy[split][R] (from eval.sweep) -> (hops, loops, grid hops x loops) of the test splits (validation
  splits are left out)."""
  splits = sorted((s for s in accuracy if not is_val(s)), key=hop_of)
  loops = sorted({int(r) for s in splits for r in accuracy[s]})
  grid = np.array([[accuracy[s].get(str(r), np.nan) for r in loops] for s in splits])
  return [hop_of(s) for s in splits], loops, grid


def heatmaps(models: dict, path: str, trained_hops: dict | None = None):
  """One hop x R accuracy panel per model (wrapping after COLUMNS); models: name -> accuracy[split][R]; a white
  dashed line above each model's trained depth, labelled in the panel."""
  fig, axes = panels(len(models), 4.2, 3.8)
  for ax, (name, accuracy) in zip(axes, models.items()):
    hops, loops, grid = accuracy_grid(accuracy)
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower",
                   extent=(loops[0] - 0.5, loops[-1] + 0.5, hops[0] - 0.5, hops[-1] + 0.5))
    if trained_hops and name in trained_hops:
      ax.axhline(trained_hops[name] + 0.5, color="white", ls="--", lw=1,
                 label=f"trained on <= {_hops(trained_hops[name])}")
      ax.legend(fontsize="x-small", loc="upper right")
    ax.set(title=name, xlabel="loops R", ylabel="hops")
  fig.colorbar(im, ax=axes, label="accuracy")
  _save(fig, path)


def grokking(curves: dict, path: str):
  """Accuracy vs training step (log scale), one panel per model, one line per split (dashed: the mixed splits,
  one hop OOD), a legend in every panel; curves: model -> split -> [[step, accuracy], ...] (validation splits are
  left out)."""
  fig, axes = panels(len(curves), 5.5, 4, sharey=True)
  for ax, (name, by_split) in zip(axes, curves.items()):
    for split, points in ((s, p) for s, p in by_split.items() if not is_val(s)):
      steps, accs = np.array(points, float).T
      ax.plot(steps, accs, label=split, lw=1.5 if "inferred" in split else 1.0,
              ls="--" if "_first" in split or "_second" in split else "-")
    ax.set(title=name, xscale="log", xlabel="training step", ylim=(-0.02, 1.02), ylabel="accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", loc="best")
  _save(fig, path)


def lens_curves(lenses: dict, path: str, splits=("train_inferred", "test_inferred_iid", "test_inferred_ood")):
  """Top-1 rate of the answer (solid) and of the bridge at the answer position (dashed) and at the first relation
  (dotted) after every layer of every loop, one panel per model, one colour per 2-hop split; lenses: model ->
  split -> lens name -> summary (looprec.lens)."""
  names = list(lenses)
  fig, axes = panels(len(names), 5.5, 4, sharey=True)
  for ax, name in zip(axes, names):
    shown = [s for s in splits if s in lenses[name]]
    if not shown:
      continue
    for split, color in zip(shown, plt.cm.tab10(np.arange(len(shown)))):
      for target, style in (("answer", "-"), ("bridge", "--"), ("bridge_at_r1", ":")):
        top1_RxL = np.array(lenses[name][split][target]["top1_by_layer"])
        depth = np.arange(1, top1_RxL.size + 1)
        ax.plot(depth, top1_RxL.ravel(), ls=style, color=color, marker=".", label=f"{split} {target}")
    for boundary in np.arange(top1_RxL.shape[1], top1_RxL.size, top1_RxL.shape[1]) + 0.5:
      ax.axvline(boundary, color="grey", lw=0.5)
    ax.set(title=f"{name} (grey lines: loop boundaries)", xlabel="layer, counted over all loops", xticks=depth,
           ylim=(-0.02, 1.02), ylabel="top-1 rate")
    ax.legend(fontsize="x-small", loc="best")
  _save(fig, path)


def margin_curves(margins_by_model: dict, path: str):
  """Margin vs loop, one line per hop (test splits), a dashed vertical line at each hop's t* (the mean first loop
  at which an example is answered right), the zero line; every line named in each panel's legend."""
  fig, axes = panels(len(margins_by_model), 5, 3.8)
  for ax, (name, by_split) in zip(axes, margins_by_model.items()):
    splits = sorted((s for s in by_split if not is_val(s)), key=hop_of)
    for split, color in zip(splits, plt.cm.viridis(np.linspace(0, 0.95, len(splits)))):
      m = by_split[split]
      ax.plot(range(1, len(m["margin"]) + 1), m["margin"], color=color, label=_hops(hop_of(split)))
      if m["t_star"] is not None:
        ax.axvline(m["t_star"], color=color, ls="--", lw=0.8)
    ax.axhline(0, color="black", lw=0.8, label="margin 0 (answer tied)")
    ax.plot([], [], color="grey", ls="--", lw=0.8, label="t*: mean first right loop")
    ax.set(title=name, xlabel="loop t", ylabel="logit margin (answer - best other)")
    ax.legend(fontsize="x-small", loc="best")
  _save(fig, path)
