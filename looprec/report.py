"""Markdown in a run folder: atomic writes, and the tables experiments share."""
from __future__ import annotations

from looprec.files import write_text_atomic
from looprec import selection
from looprec.data import hop_of


def write(path: str, text: str):
  """Writes a markdown file atomically (a reader never sees half of it)."""
  write_text_atomic(path, text)


SMALL = 30  # a split with fewer examples is too small to read: one example moves its accuracy by over 3 points


def examples(n: int | None) -> str:
  """A split's example count for a table cell, flagged under SMALL."""
  return "—" if n is None else f"{n}" if n >= SMALL else f"{n}, too few to read"


def small_note(sizes: dict) -> list[str]:
  """A paragraph naming the splits under SMALL examples (none: nothing)."""
  small = [f"{s} ({n})" for s, n in sizes.items() if n < SMALL]
  if not small:
    return []
  return ["", f"Too small to read (under {SMALL} examples, where one example moves the accuracy by "
              f"{100 / SMALL:.0f}+ points): {', '.join(small)}. Their accuracies are not findings."]


def model_name(name: str, kind: str | None) -> str:
  """`name (kind)`, or the name where its kind is the name itself or unknown."""
  return name if not kind or kind == name else f"{name} ({kind})"


def halting(analyses: dict, kinds: dict | None = None) -> str:
  """Per model (named with its kind), a test split x policy table of accuracy and mean / median loops, beside
  fixed R: chosen on the validation split, the oracle (best on the test split itself) and the cap; n: the split's
  examples."""
  lines = ["# Adaptive halting", ""]
  for name, a in analyses.items():
    pols = list(a["halting"])
    first = a["halting"][pols[0]]
    cap = next(iter(first.values()))["fixed_max"]["loops"]
    upto_cap = {s: {r: v for r, v in by_r.items() if int(r) <= cap} for s, by_r in a["sweep"].items()}
    lines += [f"## {model_name(name, (kinds or {}).get(name))}", "",
              "accuracy, mean / median loops; fixed R (R <= cap) chosen on the validation split, "
              "the oracle (the best test accuracy over R: an upper bound) and R = cap; n: test examples", "",
              "| split | n | " + " | ".join(pols) + " | fixed R chosen on val | best fixed R (oracle) | fixed R = cap |",
              "|---" * (len(pols) + 5) + "|"]
    tests = sorted((s for s in first if not selection.is_val(s)), key=hop_of)
    for split in tests:
      cells = [f"{a['halting'][p][split]['accuracy']:.2f}, {a['halting'][p][split]['mean_loops']:.1f} / "
               f"{a['halting'][p][split]['median_loops']:.0f}" for p in pols]
      chosen = selection.select(upto_cap, split)
      cells.append("—" if chosen["r"] is None else f"{chosen['test']:.2f}, R = {chosen['r']}")
      cells += [f"{first[split][k]['accuracy']:.2f}, R = {first[split][k]['loops']}"
                for k in ("best_fixed", "fixed_max")]
      lines.append(f"| {split} | {examples(first[split].get('examples'))} | " + " | ".join(cells) + " |")
    lines += small_note({s: first[s]["examples"] for s in tests if "examples" in first[s]}) + [""]
  return "\n".join(lines)
