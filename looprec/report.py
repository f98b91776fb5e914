"""Markdown in a run folder: atomic writes, and the tables experiments share."""
from __future__ import annotations

from looprec.files import write_text_atomic
from looprec import selection
from looprec.data import hop_of


def write(path: str, text: str):
  """Writes a markdown file atomically (a reader never sees half of it)."""
  write_text_atomic(path, text)


def halting(analyses: dict) -> str:
  """Per model, a test split x policy table of accuracy and mean / median loops, beside fixed R: chosen on the
  validation split, the oracle (best on the test split itself) and the cap."""
  lines = ["# Adaptive halting", ""]
  for name, a in analyses.items():
    pols = list(a["halting"])
    first = a["halting"][pols[0]]
    cap = next(iter(first.values()))["fixed_max"]["loops"]
    upto_cap = {s: {r: v for r, v in by_r.items() if int(r) <= cap} for s, by_r in a["sweep"].items()}
    lines += [f"## {name}", "", "accuracy, mean / median loops; fixed R (R <= cap) chosen on the validation split, "
              "the oracle (the best test accuracy over R: an upper bound) and R = cap", "",
              "| split | " + " | ".join(pols) + " | fixed R chosen on val | best fixed R (oracle) | fixed R = cap |",
              "|---" * (len(pols) + 4) + "|"]
    for split in sorted((s for s in first if not selection.is_val(s)), key=hop_of):
      cells = [f"{a['halting'][p][split]['accuracy']:.2f}, {a['halting'][p][split]['mean_loops']:.1f} / "
               f"{a['halting'][p][split]['median_loops']:.0f}" for p in pols]
      chosen = selection.select(upto_cap, split)
      cells.append("—" if chosen["r"] is None else f"{chosen['test']:.2f}, R = {chosen['r']}")
      cells += [f"{first[split][k]['accuracy']:.2f}, R = {first[split][k]['loops']}"
                for k in ("best_fixed", "fixed_max")]
      lines.append(f"| {split} | " + " | ".join(cells) + " |")
    lines.append("")
  return "\n".join(lines)
