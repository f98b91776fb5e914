"""Reports a reader needs no guessing for, in their edge cases (nothing reached, all zeros, one example): every
table says its example counts, a split under report.SMALL examples is flagged, a model is named with its kind,
and the generated sentences read correctly."""
from looprec import config as C
from looprec import report
from looprec.data import split_name
from looprec.selection import val_split
from experiments import depth_extrap, systematicity
from data_gen.composition import SPLITS

BAD_PROSE = ("at never", "peaks at 0.00", "nan", "None", "≥ 0.9 at", "1 examples")


def zeros(max_loops: int) -> dict:
  return {str(r): 0.0 for r in range(1, max_loops + 1)}


def depth_case():
  """depth_extrap smoke with its looped model an exit_gate, every accuracy 0, one example per split."""
  cfg = C.override(depth_extrap.smoke(), ["models.looped.model=kind=exit_gate"])
  splits = [s for hop in range(1, 6) for s in (split_name(hop), val_split(split_name(hop)))]
  results = {n: {"n_layers": m.n_layers, "train_loops": m.recurrence, "trained_max_hop": 2, "steps": 10,
                 "train_seconds": 1.0, "stages": [0], "accuracy": {s: zeros(cfg.eval.max_loops) for s in splits}}
             for n, m in cfg.models.items()}
  return cfg, results, {s: 1 for s in splits}


def test_depth_report_names_kinds_counts_and_flags_one_example_splits():
  cfg, results, sizes = depth_case()
  text = depth_extrap.report(cfg, results, sizes)
  header = next(l for l in text.splitlines() if l.startswith("| hop"))
  assert "| n test / val |" in header and "looped (exit_gate), dynamic" in header and "| vanilla (looped), fixed:1" in header
  assert "**looped (exit_gate)**" in text
  assert "| 3 | 1, too few to read / 1, too few to read |" in text
  assert f"Too small to read (under {report.SMALL} examples" in text and "3hop_test (1)" in text
  assert not any(bad in text for bad in BAD_PROSE), text


def test_depth_report_with_large_splits_flags_nothing():
  cfg, results, sizes = depth_case()
  text = depth_extrap.report(cfg, results, {s: 64 for s in sizes})
  assert "| 3 | 64 / 64 |" in text and "too few" not in text.lower() and "Too small" not in text


def test_systematicity_report_never_reached_all_zeros_one_example():
  cfg = systematicity.smoke()
  lens_zero = {"top1": [0.0, 0.0], "mrr": [0.1, 0.1], "peak_top1": 0.0, "peak_layer": 1, "peak_loop": 1, "n_layers": 1}
  names = list(cfg.models)
  splits = [*SPLITS, *(val_split(s) for s in SPLITS if s.startswith("test_"))]
  models = {n: {"n_layers": cfg.models[n].n_layers, "train_loops": cfg.models[n].recurrence, "steps": 10,
                "train_seconds": 1.0, "final": {s: 0.0 for s in splits},
                "accuracy": {s: zeros(cfg.eval.max_loops) for s in splits}} for n in names}
  stages = {n: {s: None for s in splits} for n in names}
  lenses = {n: {s: {k: lens_zero for k in ("answer", "bridge", "bridge_at_r1")} for s in systematicity.TWO_HOP}
            for n in names}
  sizes = {s: 1 for s in splits}
  text = systematicity.report(cfg, models, stages, lenses, sizes)
  assert "| id_atomic | 1, too few to read | 0.00 (-) | 0.00 (-) |" in text
  assert "| test_inferred_ood | 1, too few to read / 1, too few to read |" in text
  assert "ID test never" in text and "top-1 rate is 0 after every layer (never top-1)" in text
  assert "final OOD 0.00 on 1 example, too few to read" in text
  assert "**looped (looped)**" not in text and "**looped**" in text and "**vanilla (looped)**" in text
  assert not any(bad in text for bad in BAD_PROSE), text
  reached = {n: {s: 40 for s in splits} for n in names}
  text = systematicity.report(cfg, models, reached, lenses, {s: 500 for s in splits})
  assert "ID test at step 40" in text and "too few" not in text


def test_halting_report_counts_examples_and_names_kinds():
  row = {"accuracy": 0.0, "mean_loops": 1.0, "median_loops": 1.0, "examples": 1,
         "best_fixed": {"loops": 1, "accuracy": 0.0}, "fixed_max": {"loops": 4, "accuracy": 0.0}}
  analyses = {"looped": {"halting": {"kl_entropy": {"3hop_test": row, "3hop_val": row}},
                         "sweep": {"3hop_test": zeros(4), "3hop_val": zeros(4)}}}
  text = report.halting(analyses, {"looped": "exit_gate"})
  assert "## looped (exit_gate)" in text and "| split | n | kl_entropy |" in text
  assert "| 3hop_test | 1, too few to read | 0.00, 1.0 / 1 |" in text and "3hop_test (1)" in text
  assert "## looped\n" in report.halting(analyses)  # no kinds given: the name alone
