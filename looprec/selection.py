"""Choices made after training: the loop count R, picked on a validation split and reported on its test split.

Every held-out test split has a disjoint validation split beside it (`val_split`): `atomic` -> `atomic_val`,
`{k}hop_test` -> `{k}hop_val`, `test_X` -> `val_X` (systematicity probes). `select` picks R on validation (the
argmax of its accuracy, ties to the smallest R) and reads the test accuracy there; the oracle, the best test
accuracy over R (an upper bound, since it looks at the test split), is reported beside it.

    s = select(accuracy["looped"], "5hop_test")   # accuracy: split -> {str(R): accuracy}
    s["r"], s["test"], s["oracle_r"], s["oracle"]
"""
from __future__ import annotations


def val_split(test: str) -> str:
  """The validation split beside a test split."""
  if test == "atomic":
    return "atomic_val"
  if test.endswith("hop_test"):
    return test.removesuffix("_test") + "_val"
  if test.startswith("test_"):
    return "val_" + test.removeprefix("test_")
  raise ValueError(f"split {test!r} has no validation split")


def is_val(split: str) -> bool:
  return split == "atomic_val" or split.endswith("hop_val") or split.startswith("val_")


def best_r(by_r: dict) -> int:
  """The R of the highest accuracy, ties to the smallest R; by_r: {str(R): accuracy}."""
  return min((int(r) for r in by_r), key=lambda r: (-by_r[str(r)], r))


def oracle(by_r: dict) -> tuple[float, int]:
  """(best accuracy over R, the smallest R reaching it): an upper bound when by_r is the reported split."""
  r = best_r(by_r)
  return by_r[str(r)], r


def select(accuracy: dict, test: str) -> dict:
  """R chosen on test's validation split and the test accuracy there (`r`, `test`, `val`), beside the oracle
  (`oracle_r`, `oracle`); accuracy: split -> {str(R): accuracy}. Without a validation split, `r`, `test` and
  `val` are None."""
  best, r_best = oracle(accuracy[test])
  val = accuracy.get(val_split(test))
  r = best_r(val) if val else None
  return {"r": r, "test": accuracy[test][str(r)] if r else None, "val": val[str(r)] if r else None,
          "oracle_r": r_best, "oracle": best}


def text(s: dict) -> str:
  """`test (R=r) [oracle (R=r)]` of a `select` result, or only the bracketed oracle without a validation split."""
  oracle = f"[{s['oracle']:.2f} (R={s['oracle_r']})]"
  return oracle if s["r"] is None else f"{s['test']:.2f} (R={s['r']}) {oracle}"
