"""Results as data: R chosen on validation (looprec.selection), summaries of run folders (looprec.summary), and the
docs' results tables regenerated from results/ (looprec.tables, `python -m looprec tables [--check]`)."""
import json
import os
import shutil

import pytest

from conftest import ROOT
from experiments import depth_extrap
from looprec import cli, runs, selection, summary, tables
from looprec import config as C
from looprec.config import ConfigError


def test_docs_tables_match_the_summaries():
  assert tables.update_docs(ROOT, check=True) == []


def test_every_renderer_reads_a_depth_summary():
  where = os.path.join(tables.RESULTS, "depth_extrap_smoke.json")
  with open(os.path.join(ROOT, where)) as f:
    smoke = json.load(f)
  by_model = tables.depth_by_model(smoke, where, hops=("4", "5"))
  assert by_model.splitlines()[0] == "| model | hop 4 | hop 5 |" and by_model.count("\n| looped |") == 1
  with pytest.raises(ConfigError, match="no field 'aggregate.models.looped.hops.9'"):
    tables.depth_by_model(smoke, where, hops=("9",))


def test_the_grid_study_table_reads_each_cell_and_names_a_missing_field():
  hop = lambda acc, r: {"r": r, "test": acc, "val": acc, "oracle_r": r, "oracle": acc}
  model = {"steps": 900, "curves": {"loss": [[250, 9.5], [500, 3.1]], "gate": {"2hop_test": [[250, 0.1], [500, 0.4]]}},
           "hops": {"1": hop(1.0, 1), "2": hop(0.5, 4), "3": hop(0.25, 6), "4": hop(0.125, 7), "5": hop(0.0625, 9)}}
  study = {"command": "c", "commit": {"train": "abcdef0123"}, "machine": {"platform": "p", "cpu_count": 2},
           "cells": {"N=20 M=4 k=2": {"k": 2, "models": {"looped": model}}}}
  row = tables.depth_study(study, "x.json").splitlines()[2]
  assert row == ("| N=20 M=4 k=2 | looped | 900 | 2hop_test 0.40 (step 500) | 9.50 → 3.10 | 1.00, R=1 [1.00] | 0.50, R=4 [0.50] "
                 "| 0.25, R=6 [0.25] | 0.12, R=7 [0.12] | 0.06, R=9 [0.06] |")
  del model["hops"]["5"]
  with pytest.raises(ConfigError, match=r"x.json: cells.N=20 M=4 k=2.models.looped: no field 'hops.5'"):
    tables.depth_study(study, "x.json")


def test_every_registered_table_is_in_a_doc():
  text = "".join(open(os.path.join(ROOT, doc)).read() for doc in tables.DOCS)
  assert [t for t in tables.TABLES if f"<!-- table: {t} -->" not in text] == []


def test_every_hand_typed_results_table_is_marked_as_quoted():
  """Outside the generated tables and the official-values table, every section with a table says it is quoted."""
  text = tables.MARKER.sub("", open(os.path.join(ROOT, "docs/reproducing.md")).read())
  unmarked, marked, section = [], False, ""
  for line, after in zip(text.splitlines(), text.splitlines()[1:]):
    if line.startswith("#"):
      marked, section = False, line
    marked = marked or "not regenerated" in line
    if line.startswith("|") and after.startswith("|---") and not marked and "official recipe" not in section:
      unmarked.append(f"{section}: {line[:60]}")
  assert unmarked == []


def test_r_is_chosen_on_validation_ties_to_the_smallest():
  acc = {"5hop_test": {"1": 0.1, "2": 0.6, "3": 0.9, "4": 0.9}, "5hop_val": {"1": 0.2, "2": 0.8, "3": 0.8, "4": 0.7}}
  assert selection.select(acc, "5hop_test") == {"r": 2, "test": 0.6, "val": 0.8, "oracle_r": 3, "oracle": 0.9}
  assert selection.select({"5hop_test": acc["5hop_test"]}, "5hop_test")["r"] is None
  assert [selection.val_split(s) for s in ("atomic", "12hop_test", "test_inferred_ood")] == [
      "atomic_val", "12hop_val", "val_inferred_ood"]
  assert all(selection.is_val(selection.val_split(s)) for s in ("atomic", "3hop_test", "test_inferred_iid"))


def fake_run(root, seed, val_r, overrides=("train.steps=150",)):
  """A depth_extrap smoke run folder (config, results, analysis) whose 2-hop validation peaks at val_r."""
  run_dir = os.path.join(root, f"seed{seed}")
  os.makedirs(run_dir)
  cfg = C.override(depth_extrap.smoke(), [*overrides, f"seed={seed}"])
  sweep = {"atomic": {"1": 1.0, "2": 1.0}, "atomic_val": {"1": 1.0, "2": 1.0},
           "2hop_test": {"1": 0.1, "2": 0.5 + seed / 10}, "2hop_val": {"1": 0.1, "2": 0.3}}
  sweep["2hop_val"][str(val_r)] = 0.9
  halt = {s: {"accuracy": 0.5, "mean_loops": 1.5 + seed} for s in sweep}
  files = {"config.json": {"experiment": "depth_extrap", "preset": "smoke", "config": C.to_dict(cfg)},
           "results.json": {"experiment": "depth_extrap", "preset": "smoke", "wall_seconds": 10.0 + seed,
                            "models": {"looped": {"train_loops": "dynamic:2,1,3", "n_layers": 1,
                                                  "trained_max_hop": 2, "steps": 150, "train_seconds": 5.0}}},
           "analysis.json": {"models": {"looped": {"sweep": sweep, "halting": {"kl_entropy": halt}, "margins": {}}}}}
  for name, obj in files.items():
    with open(os.path.join(run_dir, name), "w") as f:
      json.dump(obj, f)
  return run_dir


def test_summary_selects_on_validation_and_aggregates_over_seeds(tmp_path):
  got = summary.summarize([fake_run(tmp_path, 0, 1), fake_run(tmp_path, 1, 2)], "cmd", "abc")
  assert got["seeds"] == [0, 1] and got["overrides"] == ["train.steps=150"] and got["commit"]["train"] == "abc"
  assert got["commands"]["train"][1] == ("python -m looprec experiment depth_extrap --preset smoke train.steps=150 "
                                         "seed=1")
  hops = [r["models"]["looped"]["hops"]["2"] for r in got["runs"]]
  assert hops == [{"r": 1, "test": 0.1, "val": 0.9, "oracle_r": 2, "oracle": 0.5},
                  {"r": 2, "test": 0.6, "val": 0.9, "oracle_r": 2, "oracle": 0.6}]
  agg = got["aggregate"]["models"]["looped"]
  assert agg["hops"]["2"]["test"] == pytest.approx({"mean": 0.35, "min": 0.1, "max": 0.6})
  assert agg["train_loops"] == "dynamic:2,1,3" and agg["halting"]["kl_entropy"]["2"]["mean_loops"]["max"] == 2.5
  assert set(agg["hops"]) == {"1", "2"} and got["aggregate"]["wall_seconds"]["mean"] == 10.5


def test_extend_adds_seeds_to_an_earlier_summary_keeping_its_commit(tmp_path, capsys):
  old = tmp_path / "old.json"
  assert cli.main(["summarize", "--out", str(old), fake_run(tmp_path, 0, 1), "--train-commit", "abc"]) == 0
  earlier = json.loads(old.read_text())  # as written before runs carried their analysis commit
  old.write_text(json.dumps({**earlier, "commit": {**earlier["commit"], "analysis": "0ld0000"},
                             "runs": [{k: v for k, v in r.items() if k != "analysis_commit"} for r in earlier["runs"]]}))
  new = fake_run(tmp_path, 1, 2)
  with open(os.path.join(new, "results.json")) as f:
    results = json.load(f)
  results.update(commit="def1234", machine={"platform": "elsewhere", "cpu_count": 8})
  with open(os.path.join(new, "results.json"), "w") as f:
    json.dump(results, f)
  out = tmp_path / "x.json"
  assert cli.main(["summarize", "--out", str(out), "--extend", str(old), new, "--train-commit", "ignored"]) == 0
  got = json.loads(out.read_text())
  assert got["seeds"] == [0, 1] and got["commit"]["train"] == ["abc", "def1234"]
  assert got["runs"][0]["machine"] == json.loads(old.read_text())["machine"] and got["machine"][1]["cpu_count"] == 8
  assert got["aggregate"]["models"]["looped"]["hops"]["2"]["r"] == {"mean": 1.5, "min": 1, "max": 2}
  assert got["commands"]["summarize"] == f"python -m looprec summarize --out {out} --extend {old} {new}"
  assert "looprec abc (seed 0), def1234 (seed 1) (training)" in tables.provenance(got, "x.json")
  # each run keeps the commit that analyzed it: the earlier summary's for seed 0, this checkout's for seed 1
  assert [r["analysis_commit"] for r in got["runs"]] == ["0ld0000", runs.code_commit()]
  assert "0ld0000 (seed 0), " in tables.provenance(got, "x.json")
  assert "elsewhere, 8 CPUs" in tables.provenance(got, "x.json")
  capsys.readouterr()
  assert cli.main(["summarize", "--out", str(out), "--extend", str(old), fake_run(tmp_path, 2, 1, ())]) == 2
  assert "differ from the first run's" in capsys.readouterr().err
  assert cli.main(["summarize", "--out", str(out), "--extend", str(tmp_path / "none.json"), new]) == 2
  assert capsys.readouterr().err == f"error: {tmp_path / 'none.json'}: missing\n"


def test_summary_refuses_mixed_or_incomplete_runs(tmp_path):
  a = fake_run(tmp_path, 0, 1)
  with pytest.raises(ConfigError, match="seed 0 appears twice"):
    summary.summarize([a, a], "cmd")
  with pytest.raises(ConfigError, match="differ from the first run's"):
    summary.summarize([a, fake_run(tmp_path, 1, 1, overrides=())], "cmd")
  os.remove(os.path.join(a, "analysis.json"))
  with pytest.raises(ConfigError, match=r"seed0/analysis.json: missing \(run `python -m looprec analyze"):
    summary.summarize([a], "cmd")


def test_a_presets_prose_is_not_an_override():
  """A run saved before its preset's deviations / reasons were reworded has the same setting as one saved after."""
  from experiments import systematicity  # pylint: disable=import-outside-toplevel
  saved = C.to_dict(systematicity.cpu_long())
  saved["deviations"], saved["reasons"] = "older wording", {}
  saved["train"]["steps"] = 50000
  assert summary.overrides("systematicity", "cpu_long", saved) == ["train.steps=50000"]


def test_summarize_command(tmp_path, capsys):
  out = tmp_path / "results" / "x.json"
  runs = [fake_run(tmp_path, 0, 1), fake_run(tmp_path, 1, 2)]
  assert cli.main(["summarize", "--out", str(out), *runs, "--train-commit", "abc"]) == 0
  assert capsys.readouterr().out == f"summary: {out}\n"
  got = json.loads(out.read_text())
  assert got["commands"]["summarize"] == f"python -m looprec summarize --out {out} {' '.join(runs)}"
  assert got["aggregate"]["models"]["looped"]["hops"]["2"]["r"] == {"mean": 1.5, "min": 1, "max": 2}
  assert cli.main(["summarize", "--out", str(out), str(tmp_path / "nowhere")]) == 2
  assert capsys.readouterr().err == f"error: {tmp_path / 'nowhere' / 'config.json'}: missing\n"


@pytest.fixture
def docs_copy(tmp_path, monkeypatch):
  """A copy of the docs and results/ in tmp_path, the working directory."""
  for path in (*tables.DOCS, tables.RESULTS):
    copy = shutil.copytree if os.path.isdir(os.path.join(ROOT, path)) else shutil.copy
    os.makedirs(os.path.dirname(tmp_path / path), exist_ok=True)
    copy(os.path.join(ROOT, path), tmp_path / path)
  monkeypatch.chdir(tmp_path)
  return tmp_path


def test_check_names_a_differing_table_and_tables_rewrites_it(docs_copy, capsys):
  doc = docs_copy / "docs" / "reproducing.md"
  original = doc.read_text()
  start = original.index("<!-- table: depth_extrap_smoke/accuracy -->")
  doc.write_text(original[:start] + original[start:].replace("| 1 |", "| 1 (edited) |", 1))
  assert cli.main(["tables", "--check"]) == 1
  assert "differs: docs/reproducing.md: depth_extrap_smoke/accuracy" in capsys.readouterr().out
  assert cli.main(["tables"]) == 0 and doc.read_text() == original
  assert cli.main(["tables", "--check"]) == 0


@pytest.mark.parametrize("breakage, message", [
    ("remove", "results/depth_extrap_smoke.json: missing (needed by table 'depth_extrap_smoke/accuracy')"),
    ("not json", "results/depth_extrap_smoke.json: not JSON"),
    ("no aggregate", "results/depth_extrap_smoke.json: no field 'aggregate'"),
    ("no hop", "results/depth_extrap_smoke.json: no field 'aggregate.models.looped.hops.2.oracle'"),
    ("unknown table", "docs/reproducing.md: table 'nope/accuracy' is not in looprec.tables.TABLES")])
def test_bad_summaries_stop_with_one_line_naming_the_file_and_field(docs_copy, capsys, breakage, message):
  path = docs_copy / tables.RESULTS / "depth_extrap_smoke.json"
  saved = json.loads(path.read_text())
  if breakage == "remove":
    path.unlink()
  elif breakage == "not json":
    path.write_text("{")
  elif breakage == "unknown table":
    doc = docs_copy / "docs" / "reproducing.md"
    doc.write_text(doc.read_text() + "\n<!-- table: nope/accuracy -->\n<!-- /table -->\n")
  else:
    if breakage == "no aggregate":
      del saved["aggregate"]
    else:
      del saved["aggregate"]["models"]["looped"]["hops"]["2"]["oracle"]
    path.write_text(json.dumps(saved))
  before = (docs_copy / "docs" / "reproducing.md").read_text()
  assert cli.main(["tables"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
  assert (docs_copy / "docs" / "reproducing.md").read_text() == before  # nothing written
