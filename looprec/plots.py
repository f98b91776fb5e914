"""Figures written into a run folder (matplotlib, no display needed)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from looprec.data import hop_of  # pylint: disable=wrong-import-position


def accuracy_grid(accuracy: dict):
  """accuracy[split][R] (from eval.sweep) -> (hops, loops, grid hops x loops)."""
  splits = sorted(accuracy, key=hop_of)
  loops = sorted({int(r) for s in splits for r in accuracy[s]})
  grid = np.array([[accuracy[s].get(str(r), np.nan) for r in loops] for s in splits])
  return [hop_of(s) for s in splits], loops, grid


def heatmaps(models: dict, path: str, trained_hops: dict | None = None):
  """One hop x R accuracy panel per model; models: name -> accuracy[split][R]."""
  names = list(models)
  fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False)
  for ax, name in zip(axes[0], names):
    hops, loops, grid = accuracy_grid(models[name])
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower",
                   extent=(loops[0] - 0.5, loops[-1] + 0.5, hops[0] - 0.5, hops[-1] + 0.5))
    if trained_hops and name in trained_hops:
      ax.axhline(trained_hops[name] + 0.5, color="white", ls="--", lw=1)
    ax.set(title=name, xlabel="loops R", ylabel="hops" if ax is axes[0][0] else None)
  fig.colorbar(im, ax=axes[0].tolist(), label="accuracy")
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)
