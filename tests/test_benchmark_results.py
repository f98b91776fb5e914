"""The speed figures docs/decisions.md quotes are those of the benchmark outputs committed in benchmarks/results/
(each run's stdout as .txt, its --out JSON where the benchmark has one)."""
import json
import pathlib
import re
import statistics

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DECISIONS = (ROOT / "docs" / "decisions.md").read_text(encoding="utf-8")
PROSE = " ".join(DECISIONS.split())  # line breaks of the wrapped prose as spaces


def output(name: str) -> str:
  """A committed benchmark output's text."""
  return (RESULTS / name).read_text(encoding="utf-8")


def sci(x: float) -> str:
  """x as decisions.md writes small differences: 7.5e-8."""
  return f"{x:.1e}".replace("e-0", "e-")


def table_row(section: str, first_cell: str) -> str:
  """The row of the first table after the line that starts with `section` whose first cell starts with first_cell."""
  after = DECISIONS[DECISIONS.index(section):].splitlines()
  start = next(i for i, line in enumerate(after) if line.startswith("|"))
  table = after[start:next(i for i in range(start, len(after)) if not after[i].startswith("|"))]
  rows = [line for line in table if line.startswith(f"| {first_cell}")]
  assert len(rows) == 1, f"{len(rows)} rows of the table after {section!r} start with {first_cell!r}"
  return rows[0]


def test_every_output_is_cited():
  for path in sorted(RESULTS.iterdir()):
    assert f"benchmarks/results/{path.stem}" in PROSE, f"decisions.md does not cite {path.name}"


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*-preset_time-*.json")), ids=lambda p: p.stem)
def test_preset_times(path):
  """End to end and each model's training time against the other tree, as "X s against Y s" / "X against Y s"."""
  runs = json.loads(path.read_text(encoding="utf-8"))["rounds"]
  here, other = runs["this checkout"], next(r for t, r in runs.items() if t != "this checkout")
  median = lambda rounds, get: statistics.median(get(r) for r in rounds)
  wall = [median(rounds, lambda r: r["wall"]) for rounds in (here, other)]
  assert f"{wall[0]:.1f} s against {wall[1]:.1f} s" in PROSE
  for name in here[0]["models"]:
    train = [median(rounds, lambda r, n=name: r["models"][n]["train_seconds"]) for rounds in (here, other)]
    assert f"{train[0]:.1f} against {train[1]:.1f} s" in PROSE, name
    for key in ("steps", "params_sum", "accuracy"):  # decisions.md says both trees trained the same models
      assert all(r["models"][name][key] == here[0]["models"][name][key] for r in here + other), (name, key)


def test_xla_flags_table():
  """Each flag set's ms/step and speed at both shapes and its parameter difference, as the run printed them (the
  printed medians are those of the rounds in the JSON)."""
  out = json.loads(output("2026-12-07-xla_flags.json"))
  text = output("2026-12-07-xla_flags.txt")
  printed = {}  # flag set -> [(ms, speed, params difference) per shape]
  for shape, block in re.findall(r"^(\w+) \(median ms/step.*\n((?:  .*\n)+)", text, re.M):
    for name, step_ms, speed, diff in re.findall(r"^  (\S+) +([\d.]+) ms +([\d.]+)x .* differ by (\S+)$", block, re.M):
      rounds = out["rounds"][shape][name]
      assert f"{statistics.median(m for r in rounds for m in r['ms']):.2f}" == step_ms, (shape, name)
      printed.setdefault(name, []).append((float(step_ms), speed, float(diff)))
  assert set(printed) == set(out["flags"]) and all(len(cells) == 2 for cells in printed.values())
  for name, cells in printed.items():
    flag = out["flags"][name]
    row = table_row("## XLA CPU flags", f"`{flag}`" if flag else "(XLA's defaults)")
    for step_ms, speed, _ in cells:
      cell = f"{step_ms:.2f}" if step_ms < 100 else f"{step_ms:.1f}"
      assert f"| {cell}{'' if not flag else f' ({speed}×)'} |" in row, (name, cell, row)
    diffs = [d for _, _, d in cells]
    expected = "—" if not flag else "bitwise" if not any(diffs) else " / ".join(map(sci, diffs))
    assert row.endswith(f"| {expected} |"), (name, expected, row)


def test_vs_pytorch_table():
  text = output("2026-12-07-vs_pytorch.txt")
  for block in text.split("\n\n")[1:]:
    dims = dict(re.findall(r"\b(d|L|R|B|T)=(\d+)", block.splitlines()[0]))
    row = table_row("**All three shapes in one run", ", ".join(dims[k] for k in "dLRBT"))
    rows = re.findall(r"^ *(.+?): +([\d.]+) ms/step(.*)$", block, re.M)
    assert len(rows) == 6, block  # looprec's three rows, PyTorch's three
    for name, step_ms, rest in rows:
      cell = f"{float(step_ms):,.0f}" if float(step_ms) >= 10_000 else step_ms
      ratios = re.search(r"looprec speed-up ([\d.]+)x, fastest looprec row ([\d.]+)x", rest)
      if ratios:
        cell += f" ({ratios[1]}× / {ratios[2]}×)"
      assert f"| {cell} " in row, (name, cell, row)


def test_systematicity_step_speed():
  text = output("2026-12-07-systematicity_step_speed.txt")
  rates = dict(re.findall(r"^(L=\d+ R=\d+ B=\s*\d+): +([\d.]+) steps/s", text, re.M))
  looped, vanilla = rates["L=1 R=4 B=256"], rates["L=4 R=1 B=256"]  # the preset's two models
  assert f"runs at {looped} steps/s for the looped model and {vanilla} for the vanilla one" in PROSE
  preset = json.loads(output("2026-12-07-preset_time-systematicity-cpu.json"))
  loop = {n: m["steps"] / m["train_seconds"] for n, m in preset["rounds"]["this checkout"][0]["models"].items()}
  assert f"training loop at {loop['looped']:.1f} and {loop['vanilla']:.1f}" in PROSE


def test_scan_bits():
  """How many gradient leaves remat=dots and unroll=R move, and the largest difference, as decisions.md says."""
  text = output("2026-12-07-scan_bits-tiny.txt")
  assert "remat=all: bitwise" in text and "are not bitwise the default step" in PROSE
  moved = {row: re.search(rf"^{re.escape(row)}: (\d+ of \d+) leaves differ\n((?:  .*\n)+)", text, re.M)
           for row in ("remat=dots", "unroll=R")}
  assert moved["remat=dots"][0].split(":")[1] == moved["unroll=R"][0].split(":")[1]  # the same leaves, amounts
  largest = max(float(d) for d in re.findall(r"differs by (\S+)", moved["remat=dots"][2]))
  assert f"the same {moved['remat=dots'][1]} gradient leaves" in PROSE
  assert f"up to {sci(largest)}" in PROSE


def test_weight_layout():
  """The three matmuls' times and the 2-D dense layers' speed and parameter difference, as decisions.md says."""
  text = output("2026-12-07-weight_layout.txt")
  matmuls = re.findall(r"x \. W ([\d.]+) ms, .*operand\) ([\d.]+) ms, .*made once\) ([\d.]+) ms", text)
  forward, transposed, made_once = (" / ".join(times) for times in zip(*matmuls))
  assert f"takes {transposed} ms against {forward} ms for the forward" in PROSE
  assert f"{made_once} ms with W^T made once" in PROSE
  blocks = re.findall(r"^(\w+) \(.*\n((?:  .*\n?)+)", text, re.M)
  steps = {(shape, dense, scan): (ratio, diff) for shape, block in blocks
           for dense, scan, ratio, diff in re.findall(r"dense (\S+) +(\S+) .* ([\d.]+)x .* by (\S+)", block)}
  assert f"train step is {steps['cpu', '2-D', 'looprec'][0]}x faster there" in PROSE
  assert f"{steps['cpu', '2-D', 'remat=dots'][0]}x together with `remat=dots`" in PROSE
  assert f"at the tiny shape it is {steps['tiny', '2-D', 'looprec'][0]}x" in PROSE
  diffs = [sci(float(steps[shape, "2-D", "looprec"][1])) for shape in ("tiny", "cpu")]
  assert f"parameters differ by {diffs[0]} and {diffs[1]} after 10 steps" in PROSE


def test_reruns():
  """The fresh-clone reruns decisions.md quotes beside the first runs."""
  rates = dict(re.findall(r"^(L=1 R=4|L=4 R=1) B=256: +([\d.]+) steps/s", output(
      "2026-12-07-systematicity_step_speed-rerun.txt"), re.M))
  assert f"measured {rates['L=1 R=4']} and {rates['L=4 R=1']} steps/s" in PROSE
  ratios = dict(re.findall(r"^(\w+) \((?:.*\n)+?  dense 2-D   looprec .* ([\d.]+)x", output(
      "2026-12-07-weight_layout-rerun.txt"), re.M))
  assert f"the 2-D dense step {ratios['cpu']}× at the cpu shape and {ratios['tiny']}× at the tiny one" in PROSE
