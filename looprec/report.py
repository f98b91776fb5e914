"""Markdown in a run folder: atomic writes, and the tables experiments share."""
from __future__ import annotations

from data_gen.io import write_text_atomic
from looprec.data import hop_of


def write(path: str, text: str):
  """Writes a markdown file atomically (a reader never sees half of it)."""
  write_text_atomic(path, text)


def halting(analyses: dict) -> str:
  """Per model, a split x policy table of accuracy and mean / median loops, with the fixed-R baselines."""
  lines = ["# Adaptive halting", ""]
  for name, a in analyses.items():
    pols = list(a["halting"])
    first = a["halting"][pols[0]]
    lines += [f"## {name}", "", "accuracy, mean / median loops", "",
              "| split | " + " | ".join(pols) + " | best fixed R | fixed R = cap |", "|---" * (len(pols) + 3) + "|"]
    for split in sorted(first, key=hop_of):
      cells = [f"{a['halting'][p][split]['accuracy']:.2f}, {a['halting'][p][split]['mean_loops']:.1f} / "
               f"{a['halting'][p][split]['median_loops']:.0f}" for p in pols]
      fixed = [first[split][k] for k in ("best_fixed", "fixed_max")]
      cells += [f"{f['accuracy']:.2f}, R = {f['loops']}" for f in fixed]
      lines.append(f"| {split} | " + " | ".join(cells) + " |")
    lines.append("")
  return "\n".join(lines)
