"""The code's shape: no function in looprec/ (the package and its models) longer than MAX_LINES lines."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_LINES = 60


def long_functions() -> dict:
  """"path:function" -> lines (def to last line) of every function longer than MAX_LINES."""
  found = {}
  for path in sorted([*ROOT.glob("looprec/*.py"), *ROOT.glob("looprec/models/*.py")]):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        if lines > MAX_LINES:
          found[f"{path.relative_to(ROOT)}:{node.name}"] = lines
  return found


def test_no_function_is_longer_than_the_limit():
  over = long_functions()
  assert not over, f"functions over {MAX_LINES} lines (split them): " + ", ".join(
      f"{name} ({lines})" for name, lines in sorted(over.items()))
