"""Every command the docs show runs, or says why not.

Each shell command in a code block of README.md and docs/*.md (and each usage line of an experiment's docstring) is
either in COVERED, which names the test (or the CI step) that runs it, or its block is marked
`<!-- not run in CI: reason -->` on the line before the fence. Every make target, CLI subcommand, flag,
experiment, preset, override, halting policy, pip extra and script those blocks, the docs' inline commands and
the benchmarks' usage lines name exists. The Python blocks of each doc run as written, in order, as one session.
"""
import ast
import contextlib
import dataclasses
import functools
import glob
import importlib
import io
import os
import re
import shlex
import subprocess
import sys
import tomllib
import typing

import pytest

from conftest import ROOT
from looprec import config as C
from looprec import cli, experiment, halting

DOCS = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]
SHELL, PYTHON, DATA = {"sh", "bash", "shell"}, {"python"}, {"text", "json"}
MARKER = re.compile(r"<!-- not run in CI: (.+?) -->")
COMMAND_LIKE = re.compile(r"\s*(\w+=\S+ )*(make|\.venv/bin/python|python3?|pip|looprec)( |$)")
PLACEHOLDER = re.compile(r"^[A-Z_]+$|[|<>\[\]…]|\.\.\.")


class By(typing.NamedTuple):
  """What runs a documented command: a test id `tests/FILE.py::NAME[ID]`, or `.ci/run: LINE` (a line of the CI
  script); `differs`: how that run departs from the command as documented ("" if it does not)."""
  runner: str
  differs: str = ""


# The mapping lives here rather than as annotations in the markdown: the same command appears in several places
# (README, docs/reproducing.md, an experiment's docstring) and gets one entry; a reader of the docs is not shown
# test ids; and the preset or size a test substitutes is stated once, next to the test that does it. Keys are
# commands as `canonical` writes them: `make experiment NAME=x` and `python -m looprec experiment x` are one key,
# with the default preset filled in, so a test that runs another preset says so in `differs`.
SMOKE = "tests/test_experiments_smoke.py::test_smoke_experiment[{}]"
ANALYZE = By("tests/test_analysis.py::test_analyze_command_writes_analysis",
             "a smoke run's folder, --max-loops 4 --margin-loops 6 --halt-loops 5")
IMPORT = By("tests/test_torch_import.py::test_import_cli_then_analyze",
            "a small PyTorch model's checkpoint (the official ones are not in the repository); `make test-torch`")
COVERED = {
    "looprec experiment depth_extrap --preset cpu": By(SMOKE.format("depth_extrap"), "--preset smoke"),
    "looprec experiment depth_extrap --preset smoke": By(SMOKE.format("depth_extrap")),
    "looprec experiment systematicity --preset smoke": By(SMOKE.format("systematicity")),
    "make test TESTS=tests/test_cli.py": By("tests/test_docs.py::test_make_test_runs_the_files_it_is_given",
                                            "`make -n`: the pytest call it makes; tests/test_cli.py runs in `make test`"),
    "looprec experiment depth_extrap --preset paper": By(SMOKE.format("depth_extrap"), "--preset smoke"),
    "looprec experiment depth_extrap --preset cpu train.steps=500 model.d_model=64":
        By(SMOKE.format("depth_extrap"), "--preset smoke, without the overrides"),
    "looprec experiment depth_extrap --preset cpu_faithful train.max_minutes=25":
        By(SMOKE.format("depth_extrap"), "--preset smoke, without the override"),
    "looprec experiment systematicity --preset cpu": By(SMOKE.format("systematicity"), "--preset smoke"),
    "looprec experiment systematicity --preset cpu_long": By(SMOKE.format("systematicity"), "--preset smoke"),
    "looprec experiment systematicity --preset cpu_long train.steps=50000":
        By(SMOKE.format("systematicity"), "--preset smoke, without the override"),
    "looprec experiment systematicity --preset paper": By(SMOKE.format("systematicity"), "--preset smoke"),
    "looprec experiment variants --preset cpu": By(SMOKE.format("variants"), "--preset smoke"),
    "looprec experiment variants --preset smoke": By(SMOKE.format("variants")),
    "looprec experiment variants --preset cpu models.hyperloop.model=kind=hyperloop,n_prelude=1,n_coda=1,n_streams=4":
        By(SMOKE.format("variants"), "--preset smoke, without the override"),
    "looprec experiment length_gen --preset cpu": By(SMOKE.format("length_gen"), "--preset smoke"),
    "looprec experiment length_gen --preset smoke": By(SMOKE.format("length_gen")),
    "looprec experiment length_gen --preset cpu_running": By(SMOKE.format("length_gen"), "--preset smoke (the "
                                                             "running parity's targets: tests/test_tasks.py)"),
    "looprec experiment length_gen --preset cpu_p_hop": By(SMOKE.format("length_gen"), "--preset smoke"),
    "looprec experiment length_gen --preset cpu_copy": By(SMOKE.format("length_gen"), "--preset smoke (parity; copy "
                                                          "and addition train in tests/test_tasks.py)"),
    "looprec experiment length_gen --preset cpu_addition": By(SMOKE.format("length_gen"), "--preset smoke (parity; "
                                                              "addition trains in tests/test_tasks.py)"),
    "looprec experiment decoding --preset cpu": By(SMOKE.format("decoding"), "--preset smoke"),
    "looprec experiment decoding --preset smoke": By(SMOKE.format("decoding")),
    "looprec experiment decoding --preset cpu_implicit": By(SMOKE.format("decoding"), "--preset smoke"),
    "looprec experiment length_gen --preset cpu data.name=p_hop data.context=32 data.seq_len=56 data.train_max=8":
        By(SMOKE.format("length_gen"), "--preset smoke, without the overrides"),
    "looprec analyze runs/depth_extrap/latest": ANALYZE,
    "looprec analyze runs/depth_extrap/latest --policy kl_entropy kl_entropy:max_entropy=1.0 kl entropy latent argmax":
        ANALYZE._replace(differs=ANALYZE.differs + ", without --policy: every policy, these among them"),
    "make test": By(".ci/run: make test"),
    "pip install -e .[torch]": By(".ci/run: make test-torch", "its recipe installs the same extra"),
    "looprec import-checkpoint checkpoints/multi_hop/final_models/r_dyn/checkpoint_final.pt --experiment "
    "depth_extrap --preset paper --out runs/imported/r_dyn": IMPORT,
    "looprec analyze runs/imported/r_dyn": IMPORT,
    "looprec experiment depth_extrap --preset smoke --runs-dir runs/smoke seed=0":
        By(SMOKE.format("depth_extrap"), "seed 0 only, into a temporary runs folder"),
    "looprec analyze RUN": ANALYZE,
    "looprec summarize --out results/depth_extrap_smoke.json RUN_SEED0 RUN_SEED1":
        By("tests/test_tables.py::test_summarize_command", "two hand-made run folders, into a temporary file"),
    "looprec summarize --out results/depth_extrap_smoke.json --extend results/depth_extrap_smoke.json RUN_SEED2":
        By("tests/test_tables.py::test_extend_adds_seeds_to_an_earlier_summary_keeping_its_commit",
           "hand-made run folders, into temporary files"),
    "make tables": By("tests/test_tables.py::test_check_names_a_differing_table_and_tables_rewrites_it",
                      "on a copy of the docs; test_docs_tables_match_the_summaries checks the committed docs"),
}

# Statements appended to each doc's Python blocks: what their comments claim.
CHECKS = {"README.md": """
assert logits_BxTxV.shape[:2] == tokens_BxT.shape and per_loop_RxBxV.shape[:2] == (20, len(read_pos_B))
assert all(sorted(map(int, acc[s])) == list(range(1, 21)) for s in splits)
assert all(1 <= table[s]["mean_loops"] <= 16 for s in splits)
assert len(curves["4hop_test"]["margin"]) == 50
assert {"bridge", "answer"} <= set(lens["test_inferred_iid"])
"""}


@dataclasses.dataclass
class Block:
  path: str
  line: int  # of the opening fence, or of a docstring's first usage line
  lang: str
  lines: list  # (line number, text) of its content
  marker: str | None  # the reason of a `not run in CI` marker

  @property
  def text(self) -> str:
    return "\n".join(text for _, text in self.lines)


def markdown_blocks(path: str) -> list[Block]:
  lines = open(os.path.join(ROOT, path), encoding="utf-8").read().splitlines()
  blocks, i = [], 0
  while i < len(lines):
    if lines[i].startswith("```"):
      end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
      before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
      marker = MARKER.fullmatch(before.strip())
      blocks.append(Block(path, i + 1, lines[i][3:].strip(), [(j + 1, lines[j]) for j in range(i + 1, end)],
                          marker.group(1) if marker else None))
      i = end
    i += 1
  return blocks


def docstring_blocks(folder: str) -> list[Block]:
  """The indented command lines of the module docstrings in a folder, as one shell block per module."""
  blocks = []
  for path in sorted(glob.glob(os.path.join(ROOT, folder, "*.py"))):
    tree = ast.parse(open(path, encoding="utf-8").read())
    doc = ast.get_docstring(tree, clean=False) or ""
    lines = [(tree.body[0].lineno + i, line.strip()) for i, line in enumerate(doc.splitlines())
             if line.startswith("    ") and COMMAND_LIKE.match(line)]
    if lines:
      blocks.append(Block(os.path.relpath(path, ROOT), lines[0][0], "sh", lines, None))
  return blocks


@functools.cache
def all_blocks() -> tuple:
  return tuple(b for path in DOCS for b in markdown_blocks(path)) + tuple(docstring_blocks("experiments"))


def commands(block: Block) -> list[tuple[int, list[str]]]:
  """(line, tokens) of each command of a shell block: lines ending in a backslash joined, comments dropped."""
  out, pending, start = [], "", 0
  for number, line in block.lines:
    start = start if pending else number
    if line.rstrip().endswith("\\"):
      pending += line.rstrip()[:-1] + " "
      continue
    tokens = shlex.split(pending + line, comments=True)
    if tokens:
      out.append((start, tokens))
    pending = ""
  return out


def inline_spans() -> list[tuple[str, int, str]]:
  """(path, line, text) of every inline code span (`...`) of the docs' prose, its whitespace collapsed."""
  out = []
  for path in DOCS:
    text = open(os.path.join(ROOT, path), encoding="utf-8").read()
    text = re.sub(r"^```.*?^```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S | re.M)
    out += [(path, text.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split()))
            for m in re.finditer(r"`([^`]+)`", text)]
  return out


def inline_commands() -> list[tuple[str, int, list[str]]]:
  """(path, line, tokens) of the commands among the inline spans."""
  return [(path, line, shlex.split(span)) for path, line, span in inline_spans()
          if COMMAND_LIKE.match(span) and not span.startswith("looprec ")]


@functools.cache
def makefile() -> tuple[set, str, dict]:
  """(targets, the Makefile's text, variable defaults)."""
  text = open(os.path.join(ROOT, "Makefile"), encoding="utf-8").read()
  targets = set(re.findall(r"^([\w-]+):", text, flags=re.M))
  defaults = dict(re.findall(r"^(\w+) \?= *(.*)$", text, flags=re.M))
  return targets, text, defaults


def split_env(tokens: list[str]) -> tuple[list[str], list[str]]:
  n = next((i for i, t in enumerate(tokens) if not re.fullmatch(r"\w+=.*", t)), len(tokens))
  return tokens[:n], tokens[n:]


def program(tokens: list[str]) -> list[str]:
  """The command with `.venv/bin/python -m M` written as `M` and `python SCRIPT` as `SCRIPT`; make as is."""
  if tokens and re.fullmatch(r"(\.venv/bin/)?python3?", tokens[0]):
    return tokens[2:] if len(tokens) > 2 and tokens[1] == "-m" else tokens[1:]
  return tokens


def canonical(tokens: list[str]) -> list[str]:
  """One spelling of a command: `make experiment`/`make analyze` as the CLI call they make, `python -m looprec`
  as `looprec`, an experiment's preset filled in and placed after its name, overrides in the order given."""
  env, tokens = split_env(tokens)
  tokens = program(tokens)
  if tokens[:1] == ["make"] and len(tokens) > 1 and tokens[1] in ("experiment", "analyze"):
    v = {**makefile()[2], **dict(t.split("=", 1) for t in tokens[2:])}
    if tokens[1] == "analyze":
      tokens = ["looprec", "analyze", v.get("RUN", "runs/$(NAME)/latest").replace("$(NAME)", v["NAME"])]
    else:
      tokens = (["looprec", "experiment", v["NAME"]] + (["--preset", v["PRESET"]] if v.get("PRESET") else [])
                + (["--resume", v["RESUME"]] if v.get("RESUME") else []) + v.get("ARGS", "").split())
  if tokens[:2] == ["looprec", "experiment"] and has_name(tokens[2:]):
    name, flags, overrides = experiment_args(tokens[2:])
    if "--resume" not in flags and "--preset" not in flags:
      try:
        flags["--preset"] = experiment.load(name).DEFAULT_PRESET
      except C.ConfigError:
        pass
    tokens = (["looprec", "experiment", name] + [x for f in ("--preset", "--resume", "--runs-dir") if f in flags
                                                  for x in (f, flags[f])] + overrides)
  return env + tokens


def has_name(args: list[str]) -> bool:
  """Whether `looprec experiment`'s arguments name an experiment (`experiment --help` does not)."""
  return any(not t.startswith("-") for t in args)


def experiment_args(args: list[str]) -> tuple[str, dict, list[str]]:
  """(name, {flag: value}, overrides) of `looprec experiment`'s arguments."""
  flags = {t: args[i + 1] for i, t in enumerate(args[:-1]) if t.startswith("--")}
  rest = [t for i, t in enumerate(args) if not t.startswith("--") and not (i and args[i - 1].startswith("--"))]
  return rest[0], flags, rest[1:]


def key(tokens: list[str]) -> str:
  return " ".join(canonical(tokens))


@functools.cache
def help_text(*cmd: str) -> str | None:
  """`--help` of a subcommand (`looprec experiment`, `data_gen chains`); None if it has none."""
  main = {"looprec": cli.main, "data_gen": importlib.import_module("data_gen.__main__").main}[cmd[0]]
  out = io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
    try:
      code = main([*cmd[1:], "--help"])
    except SystemExit as e:
      code = e.code
  return out.getvalue() if code == 0 else None


def pip_extras() -> set:
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    return set(tomllib.load(f)["project"]["optional-dependencies"])


def flags_of(tokens) -> list[str]:
  return [t.strip("[]").split("=")[0] for t in tokens if t.strip("[]").startswith("--")]


def check_experiment(tokens: list[str]) -> str | None:
  """Resolves `looprec experiment NAME [--preset P] [--resume R] overrides` without running it."""
  name, flags, overrides = experiment_args(canonical(tokens)[2:])
  try:
    module = experiment.load(name)
    if "--resume" in flags:
      fixed = [o for o in overrides if not experiment.RESUMABLE.fullmatch(o.partition("=")[0])]
      return f"--resume cannot change {fixed[0]}" if fixed else None
    experiment.resolve(module, flags.get("--preset"), overrides)
  except C.ConfigError as e:
    return str(e)
  return None


def problems(tokens: list[str]) -> list[str]:
  """What of a command does not exist: make targets and variables, subcommands, flags, experiments, presets,
  overrides, halting policies, pip extras, scripts and test files. Placeholders (RUN, a|b, [...]) are skipped."""
  env, tokens = split_env(tokens)
  cmd, concrete = program(tokens), not any(PLACEHOLDER.search(t) for t in tokens)
  out = []
  if cmd[0] == "make":
    targets, text, _ = makefile()
    out += [f"no make target {t!r}" for t in cmd[1:] if "=" not in t and t not in targets]
    out += [f"the Makefile reads no {t.split('=')[0]}" for t in cmd[1:]
            if "=" in t and f"$({t.split('=')[0]})" not in text]
    cmd = canonical(tokens) if cmd[1:2] in (["experiment"], ["analyze"]) else cmd
  if cmd[0] in ("looprec", "data_gen") and len(cmd) > 1:
    usage = help_text(cmd[0], cmd[1])
    if usage is None:
      return out + [f"`{cmd[0]}` has no subcommand {cmd[1]!r}"]
    out += [f"`{cmd[0]} {cmd[1]}` has no flag {f}" for f in flags_of(cmd) if f not in usage]
    if cmd[1] == "experiment" and concrete and has_name(cmd[2:]):
      out += [e for e in [check_experiment(tokens)] if e]
    if cmd[1] == "import-checkpoint" and concrete:
      opts = dict(zip(cmd[2:-1], cmd[3:]))
      try:
        experiment.resolve(experiment.load(opts["--experiment"]), opts.get("--preset", "paper"),
                           [t for t in cmd[2:] if "=" in t])
      except C.ConfigError as e:
        out.append(str(e))
    if cmd[1] == "analyze" and "--policy" in cmd:
      for spec in cmd[cmd.index("--policy") + 1:]:
        if spec.startswith("-"):
          break
        try:
          halting.parse_policy(spec)
        except C.ConfigError as e:
          out.append(str(e))
  elif cmd[0] == "pip":
    for extra in re.findall(r"(?:(?<= )\.|looprec)\[([\w,]+)\]", " ".join(cmd)):
      out += [f"pyproject.toml has no extra {x!r}" for x in extra.split(",") if x not in pip_extras()]
  elif cmd[0] == "pytest":
    files = [t for t in cmd if t.startswith("tests/")]
    out += [f"no file {f}" for f in files if not os.path.isfile(os.path.join(ROOT, f.split("::")[0]))]
    if "-k" in cmd and not out:
      source = "".join(open(os.path.join(ROOT, f)).read() for f in files)
      out += [f"-k {cmd[cmd.index('-k') + 1]!r} matches no test"] if cmd[cmd.index("-k") + 1] not in source else []
  elif cmd[0].endswith(".py"):
    path = os.path.join(ROOT, cmd[0])
    if not os.path.isfile(path):
      return out + [f"no script {cmd[0]}"]
    source = open(path, encoding="utf-8").read()
    out += [f"{cmd[0]} has no flag {f}" for f in flags_of(cmd) if f'"{f}"' not in source]
  return out


def uncovered(blocks) -> list[str]:
  """One line per command of an unmarked shell block that COVERED does not know."""
  return [f"{block.path}:{line}: {' '.join(t)}: add it to COVERED in tests/test_docs.py (the test that runs it) "
          f"or mark the block <!-- not run in CI: reason -->"
          for block in blocks if block.lang in SHELL and block.marker is None
          for line, t in commands(block) if key(t) not in COVERED]


def test_every_documented_command_is_run_by_a_test_or_marked():
  missing = uncovered(all_blocks())
  assert not missing, "\n".join(missing)


def test_a_new_command_neither_covered_nor_marked_is_named_with_its_line(tmp_path):
  doc = tmp_path / "new.md"
  doc.write_text("# New\n\n```sh\nmake experiment NAME=variants \\\n  PRESET=smoke   # covered\n"
                 "make experiment NAME=variants PRESET=smoke ARGS=seed=3\n```\n"
                 "<!-- not run in CI: needs a TPU -->\n```sh\nmake experiment PRESET=paper ARGS=seed=3\n```\n")
  assert uncovered(markdown_blocks(str(doc))) == [
      f"{doc}:6: make experiment NAME=variants PRESET=smoke ARGS=seed=3: add it to COVERED in tests/test_docs.py "
      "(the test that runs it) or mark the block <!-- not run in CI: reason -->"]


def test_every_block_says_its_language_and_commands_are_in_shell_blocks():
  bad = []
  for block in all_blocks():
    if block.lang not in SHELL | PYTHON | DATA:
      bad.append(f"{block.path}:{block.line}: a code block tagged {block.lang!r}: tag it sh, python, text or json")
    elif block.lang in DATA:
      bad += [f"{block.path}:{n}: a command in a {block.lang} block: tag it sh" for n, line in block.lines
              if COMMAND_LIKE.match(line)]
  assert not bad, "\n".join(bad)


def test_markers_give_a_reason_and_mark_a_block():
  for path in DOCS:
    lines = open(os.path.join(ROOT, path), encoding="utf-8").read().splitlines()
    for i, line in enumerate(lines):
      if line.lstrip().startswith("<!--") and "not run in CI" in line:
        marker = MARKER.fullmatch(line.strip())
        assert marker and marker.group(1).strip(), f"{path}:{i + 1}: write it <!-- not run in CI: reason -->"
        after = next((text for text in lines[i + 1:] if text.strip()), "")
        assert after.startswith("```"), f"{path}:{i + 1}: the marker is not right before a code block"


def test_every_covered_command_is_still_documented():
  documented = {key(t) for b in all_blocks() if b.lang in SHELL for _, t in commands(b)}
  assert not set(COVERED) - documented, f"COVERED entries no doc shows any more: {set(COVERED) - documented}"


def test_the_tests_that_cover_commands_exist():
  tests = sorted({by.runner for by in COVERED.values() if by.runner.startswith("tests/")})
  for test in tests:
    path, _, name = test.partition("::")
    assert os.path.isfile(os.path.join(ROOT, path)), f"{test}: no file {path}"
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert name.partition("[")[0] in functions, f"{test}: {path} defines no {name.partition('[')[0]}"
  parametrized = [t for t in tests if "[" in t]
  proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:xdist", "-p",
                         "no:cacheprovider", "-m", "", *parametrized], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  missing = [t for t in parametrized if t not in proc.stdout.splitlines()]
  assert proc.returncode == 0 and not missing, f"not collected: {missing}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
  with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
    ci = [line.removeprefix("tier ") for line in f.read().splitlines()]  # `tier make test`: a timed step
  for step in {by.runner.removeprefix(".ci/run: ") for by in COVERED.values() if by.runner.startswith(".ci/")}:
    assert step in ci, f".ci/run has no line {step!r}"
    assert not problems(shlex.split(step)), problems(shlex.split(step))


def test_documented_commands_name_what_exists():
  blocks = [b for b in all_blocks() if b.lang in SHELL] + docstring_blocks("benchmarks")
  found = [(b.path, line, t) for b in blocks for line, t in commands(b)] + inline_commands()
  assert len(found) > 40
  bad = [f"{path}:{line}: {' '.join(t)}: {p}" for path, line, t in found for p in problems(t)]
  assert not bad, "\n".join(bad)


def has_key(node, path: list[str]) -> bool:
  """Whether a config tree has a dotted path; a `models` entry stands for any model (models.NAME.steps)."""
  if not path:
    return True
  if isinstance(node, dict):
    return any(has_key(v, path[1:]) for v in node.values())
  return dataclasses.is_dataclass(node) and hasattr(node, path[0]) and has_key(getattr(node, path[0]), path[1:])


def test_config_keys_shown_inline_exist():
  """`train.remat=loop|dots`, `ARGS="data.source=..."`, `models.NAME.model=...`: the key is in some experiment's
  config."""
  names = [os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "experiments", "[a-z]*.py"))]
  configs = [m.PRESETS[m.DEFAULT_PRESET]() for m in map(experiment.load, names)]
  shown = [(path, line, k) for path, line, span in inline_spans()
           for k in re.findall(r"(?:^|[\s\"])((?:seed|data|model|models|train|eval)\.[\w.]+)=", span)]
  assert len(shown) > 40
  assert not has_key(configs[0], ["train", "stepz"]) and not has_key(configs[0], ["models", "x", "y"])
  bad = [f"{path}:{line}: no config has {k}" for path, line, k in shown
         if not any(has_key(cfg, k.split(".")) for cfg in configs)]
  assert not bad, "\n".join(bad)


@pytest.mark.parametrize("bad, message", [
    ("make experiment NAME=depth_extrap PRESET=fast", "unknown preset 'fast'"),
    ("make experiment NAME=depth_extra", "unknown experiment 'depth_extra'"),
    ('make experiment ARGS="train.stepz=5"', "train.stepz"),
    ("make experiment NAME=variants RESUME=runs/x ARGS=model.d_model=8", "cannot change model.d_model=8"),
    ("make experimnt", "no make target 'experimnt'"),
    ("make analyze RUNS=x", "the Makefile reads no RUNS"),
    (".venv/bin/python -m looprec analyze RUN --polcy kl", "has no flag --polcy"),
    ("python -m looprec analyze r --policy kl_entropy:eps=-1", "eps=-1.0 must be >= 0"),
    ("python -m looprec analyse r", "no subcommand 'analyse'"),
    ("python -m data_gen chains --outdir x", "has no flag --outdir"),
    ("pip install -e '.[gpu]'", "no extra 'gpu'"),
    (".venv/bin/python benchmarks/vs_pytorch.py --shape tiny", "has no flag --shape"),
    (".venv/bin/python benchmarks/nope.py", "no script benchmarks/nope.py"),
])
def test_a_drifted_command_is_caught(bad, message):
  assert any(message in p for p in problems(shlex.split(bad))), problems(shlex.split(bad))


def test_canonical_spellings_agree():
  same = ["make experiment NAME=systematicity PRESET=cpu_long ARGS='train.steps=5 seed=1'",
          ".venv/bin/python -m looprec experiment systematicity --preset cpu_long train.steps=5 seed=1",
          "python -m looprec experiment --preset cpu_long systematicity train.steps=5 seed=1"]
  assert {key(shlex.split(s)) for s in same} == {
      "looprec experiment systematicity --preset cpu_long train.steps=5 seed=1"}
  assert key(["make", "experiment"]) == "looprec experiment depth_extrap --preset cpu"
  assert key(["make", "analyze", "RUN=r"]) == "looprec analyze r"


@pytest.mark.parametrize("command", ["make experiment", "make analyze RUN=r",
                                     "make experiment NAME=variants PRESET=smoke RESUME=r ARGS='seed=1 train.steps=5'"])
def test_make_runs_the_cli_call_that_canonical_writes(command):
  """`make -n` prints the CLI call a make target runs (after setting up .venv, if it would)."""
  env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}  # under `make test`
  proc = subprocess.run(["make", "-n", "--no-print-directory", *shlex.split(command)[1:]], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=60)
  assert key(shlex.split(proc.stdout.splitlines()[-1])) == key(shlex.split(command)), proc.stdout


@pytest.mark.parametrize("path", [p for p in DOCS if any(b.lang in PYTHON for b in markdown_blocks(p))])
def test_python_blocks_run_as_written(path, tmp_path):
  """The doc's Python blocks in order as one session, in an empty folder (its runs/ land there); each line at its
  line number in the doc, so a traceback names the doc's line. With the compilation cache, as the CLI has it, which
  the smoke runs of other tests have filled."""
  lines = {n: text for b in markdown_blocks(path) if b.lang in PYTHON and b.marker is None for n, text in b.lines}
  (tmp_path / "blocks.py").write_text("\n".join(lines.get(n, "") for n in range(1, max(lines) + 1))
                                     + CHECKS.get(path, ""))
  run = ("from looprec import compile_cache; compile_cache.enable(); "
         f"exec(compile(open('blocks.py').read(), {path!r}, 'exec'))")
  proc = subprocess.run([sys.executable, "-c", run],
                        cwd=tmp_path, capture_output=True, text=True, timeout=900,
                        env={**os.environ, "PYTHONPATH": ROOT})
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_make_test_runs_the_files_it_is_given():
  """`make test TESTS=FILE` runs pytest on that file alone, after installing the dev extra (pytest) when missing."""
  env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}  # under `make test`
  proc = subprocess.run(["make", "-n", "--no-print-directory", "test", "TESTS=tests/test_cli.py"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=60)
  assert proc.stdout.splitlines()[-1].split() == [".venv/bin/python", "-m", "pytest", "-q", "-n", "2", "--dist",
                                                  "loadfile", "tests/test_cli.py"], proc.stdout
  assert re.search(r"^test: \$\(VENV\)/\.stamp-dev$", makefile()[1], flags=re.M)  # the dev extra first
  assert re.search(r'^\$\(VENV\)/\.stamp-dev:.*\n\t\$\(PY\) -m pip install -q -e "\.\[dev\]"', makefile()[1], flags=re.M)


def paragraphs() -> list[tuple[str, str]]:
  """(doc, paragraph with its whitespace collapsed) of the prose of README.md and docs/*.md: code blocks,
  generated tables and table rows left out, paragraphs under 150 characters too."""
  out = []
  for path in DOCS:
    text = re.sub(r"^```.*?^```", "", open(os.path.join(ROOT, path), encoding="utf-8").read(), flags=re.S | re.M)
    text = re.sub(r"<!-- table: \S+ -->.*?<!-- /table -->", "", text, flags=re.S)
    out += [(path, p) for p in (" ".join(p.split()) for p in re.split(r"\n\s*\n", text))
            if len(p) >= 150 and not p.startswith("|")]
  return out


def duplicates(paras: list, threshold: float = 0.8) -> list[str]:
  """`doc: start… ~ doc: start…` for each pair of paragraphs at least `threshold` alike (difflib)."""
  import difflib  # pylint: disable=import-outside-toplevel
  found = []
  for i, (doc_a, a) in enumerate(paras):
    for doc_b, b in paras[i + 1:]:
      m = difflib.SequenceMatcher(None, a, b, autojunk=False)
      if m.real_quick_ratio() >= threshold and m.quick_ratio() >= threshold and m.ratio() >= threshold:
        found.append(f"{doc_a}: {a[:80]}… ~ {doc_b}: {b[:80]}…")
  return found


def test_no_paragraph_is_said_twice():
  """A paragraph said twice drifts (one copy gets updated): across README.md and docs/*.md none is 80% alike
  another."""
  assert not duplicates(paragraphs()), "\n".join(duplicates(paragraphs()))


def test_a_paragraph_said_twice_in_another_tense_is_caught():
  said = ("`make experiment NAME=systematicity PRESET=paper` likewise: not run on an accelerator either. On this CPU "
          "it ran end to end in 11 min 6 s, nearly all of it compiling the d = 768 models.")
  again = said.replace("ran", "runs").replace("likewise:", "is RECIPE task A;")
  assert len(duplicates([("a.md", said), ("b.md", again), ("c.md", "x" * 150)])) == 1


def test_package_docstring_runs_as_written(tmp_path):
  """looprec/__init__.py's indented examples, in order as one session, in an empty folder (its runs/ land there)."""
  import looprec  # pylint: disable=import-outside-toplevel
  code = "\n".join(line[4:] for line in looprec.__doc__.splitlines() if line.startswith("    "))
  checks = ("\nassert logits_BxTxV.shape[:2] == tokens_BxT.shape and per_loop_RxBxV.shape[0] == 16"
            "\nassert set(acc) == set(table) == set(curves) == set(splits)"
            "\nassert {'bridge', 'answer'} <= set(lens['test_inferred_iid'])"
            "\nassert written_BxK.shape == chains['path'].shape and set(scores) == {'path', 'final'}"
            "\nassert memory[0] == 32 * memory[2] and memory[1] == 4 * memory[2]"
            "\nassert tokens_BxK.shape == loops_BxK.shape and 1 <= loops_BxK.min() and loops_BxK.max() <= 8")
  (tmp_path / "example.py").write_text(code + checks)
  proc = subprocess.run([sys.executable, "-c", "from looprec import compile_cache; compile_cache.enable(); "
                         "exec(compile(open('example.py').read(), 'looprec/__init__.py', 'exec'))"],
                        cwd=tmp_path, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": ROOT})
  assert proc.returncode == 0, proc.stderr[-3000:]


NUMBERS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
COUNT = re.compile(r"\b(" + "|".join(NUMBERS) + r"|\d+) (notebooks|halting policies|policies|model kinds|kinds|"
                   r"experiments|tests)\b", re.I)


def stale_counts(text: str) -> list[str]:
  """Each `N notebooks|policies|kinds|experiments` in text that is not the count there is now, and any `N tests`
  (the suite grows: a test count is generated or not written)."""
  import looprec.models  # pylint: disable=import-outside-toplevel,unused-import  (registers the kinds)
  actual = {"notebooks": len(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb"))), "policies": len(halting.RULES),
            "kinds": len(C.KINDS), "experiments": len(experiment.names())}
  out = []
  for m in COUNT.finditer(text):
    n = int(m.group(1)) if m.group(1).isdigit() else NUMBERS[m.group(1).lower()]
    noun = m.group(2).lower().split()[-1]
    if noun == "tests" or n != actual[noun]:
      out.append(f"{m.group(0)!r}" + ("" if noun == "tests" else f" (there are {actual[noun]})"))
  return out


def test_counts_in_the_readme_are_the_counts_there_are():
  assert not stale_counts(open(os.path.join(ROOT, "README.md"), encoding="utf-8").read())
  assert stale_counts("the suite's 266 tests; five halting policies; five notebooks") == [
      "'266 tests'", f"'five halting policies' (there are {len(halting.RULES)})"]
