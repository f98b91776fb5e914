"""Figures a reader needs no guessing for: panels wrap, every drawn line and marker has a legend entry."""
import matplotlib.pyplot as plt
import pytest

from looprec import plots


@pytest.fixture
def figures(monkeypatch):
  """The figures the plot functions draw, kept open instead of closed after saving."""
  drawn = []
  monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig))
  yield drawn
  for fig in drawn:
    plt.close(fig)


def labels(ax) -> list[str]:
  legend = ax.get_legend()
  return [t.get_text() for t in legend.get_texts()] if legend else []


def sweep(hops=(1, 2, 3), loops=4) -> dict:
  return {f"{h}hop_test": {str(r): min(1.0, r / h) for r in range(1, loops + 1)} for h in hops} | {
      "3hop_val": {str(r): 0.5 for r in range(1, loops + 1)}}


def test_heatmaps_wrap_and_label_the_trained_depth(figures):
  models = {f"model{i}": sweep() for i in range(7)}
  plots.heatmaps(models, "unused.png", trained_hops={"model0": 2})
  fig, = figures
  shown = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>" and ax.get_title()]
  assert len(shown) == 7 and len({ax.get_position().y0 for ax in shown}) == 2  # 4 + 3 panels, two rows
  assert labels(shown[0]) == ["trained on <= 2 hops"] and labels(shown[1]) == []
  assert all(ax.get_ylabel() == "hops" and ax.get_xlabel() == "loops R" for ax in shown)


def test_margin_curves_name_every_line_in_every_panel(figures):
  curve = lambda hop: {"margin": [hop - 3.0, 0.5, 1.0], "t_star": 1.5 if hop < 3 else None}
  plots.margin_curves({"looped": {f"{h}hop_test": curve(h) for h in (1, 3)}, "vanilla": {"1hop_test": curve(1)}},
                      "unused.png")
  fig, = figures
  looped, vanilla = [ax for ax in fig.axes if ax.get_visible()]
  assert labels(looped) == ["1 hop", "3 hops", "margin 0 (answer tied)", "t*: mean first right loop"]
  assert labels(vanilla) == ["1 hop", "margin 0 (answer tied)", "t*: mean first right loop"]


def test_grokking_and_lens_have_a_legend_in_every_panel(figures):
  curves = {name: {"train_inferred": [[10, 0.1], [20, 0.9]], "test_inferred_ood_first": [[10, 0.0], [20, 0.4]],
                   "val_inferred_ood": [[10, 0.0], [20, 0.3]]} for name in ("looped", "vanilla")}
  plots.grokking(curves, "unused.png")
  lens = {"top1_by_layer": [[0.1], [0.5]]}
  plots.lens_curves({"looped": {"train_inferred": {t: lens for t in ("answer", "bridge", "bridge_at_r1")}}},
                    "unused.png")
  grok, lens_fig = figures
  assert [labels(ax) for ax in grok.axes] == [["train_inferred", "test_inferred_ood_first"]] * 2
  assert labels(lens_fig.axes[0]) == [f"train_inferred {t}" for t in ("answer", "bridge", "bridge_at_r1")]
