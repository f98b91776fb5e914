"""The full-attention depth study's machinery (benchmarks/depth_extrap_full_attention.py, run_variants of
benchmarks/depth_extrap_ablation.py): a finished cell is read back, not re-run; its summary's curves and per-hop
selection."""
import os
import sys

import pytest
from tensorboardX import SummaryWriter

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import depth_extrap_ablation as ablation  # noqa: E402  pylint: disable=wrong-import-position
import depth_extrap_full_attention as study  # noqa: E402  pylint: disable=wrong-import-position

CELL = "N=20 M=4 k=2 R=[2,4]"  # brackets: a glob pattern if not escaped
ACCURACY = {s: {str(r): 0.1 * r if s == "3hop_test" else 0.5 for r in range(1, 11)}
            for s in ("atomic", "2hop_test", "3hop_test", "4hop_test", "5hop_test")}
ACCURACY["3hop_val"] = {str(r): 1.0 if r == 4 else 0.0 for r in range(1, 11)}


def finished_cell(out_dir) -> dict:
  row = {"overrides": study.GRID[CELL], "seconds": 12.0, "commit": "abc", "models": {"looped": {
      "stages": [[0, 2]], "steps": 500, "trained_max_hop": 2, "train_seconds": 10.0, "accuracy": ACCURACY,
      "best": {}}}}
  run_dir = ablation.variant_dir(str(out_dir), CELL)
  os.makedirs(run_dir)
  ablation.runs.write_json(os.path.join(run_dir, "variant.json"), row)
  writer = SummaryWriter(os.path.join(run_dir, "tb", "looped"))
  for step in range(0, 501, 25):
    writer.add_scalar("train/loss", 4.0 if step <= 250 else 2.0, step)
  writer.add_scalar("eval/2hop_test", 0.25, 500)
  writer.close()
  return row


def test_a_finished_cell_is_read_back_not_trained(tmp_path, monkeypatch):
  row = finished_cell(tmp_path)
  monkeypatch.setattr(ablation.depth_extrap, "run", lambda *a: pytest.fail("a finished cell was trained again"))
  assert ablation.run_variants(study.base_config([]), {CELL: study.GRID[CELL]}, str(tmp_path)) == {CELL: row}


def test_the_summary_has_each_cells_curves_and_val_chosen_r(tmp_path):
  table = {CELL: finished_cell(tmp_path)}
  got = study.summary(table, str(tmp_path), [], "cmd", None)
  cell = got["cells"][CELL]
  assert cell["k"] == 2 and got["commit"]["train"] == "abc"
  looped = cell["models"]["looped"]
  assert looped["curves"] == {"loss": [[0, 4.0], [250, 4.0], [500, 2.0]], "gate": {"2hop_test": [[500, 0.25]]}}
  assert looped["hops"]["3"] == {"r": 4, "test": 0.4, "val": 1.0, "oracle_r": 10, "oracle": 1.0}
  assert set(looped["hops"]) == {"1", "2", "3", "4", "5"}
