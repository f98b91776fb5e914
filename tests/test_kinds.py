"""Model kinds own their configs: no import cycle among looprec's modules, and a kind defined outside the package,
with its own hyperparameter, is configured, trained, swept, halted and analyzed through the library as it is."""
import ast
import os

import jax
import numpy as np
import pytest

from conftest import temporary_module
import looprec
from looprec import analysis, config as C, data, models, sharding, train
from looprec.config import ChainDataConfig, ConfigError, ModelConfig, Recurrence, TrainConfig

PACKAGE = os.path.dirname(os.path.abspath(looprec.__file__))


def module_files() -> dict:
  """looprec's module name -> its file."""
  out = {}
  for root, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(root, f), os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
        out[rel.removesuffix(".__init__")] = os.path.join(root, f)
  return out


def imported(name: str, path: str, modules) -> set:
  """The looprec modules a module imports anywhere in its file (functions included). `from P import m` is module
  P.m where that is one, else P; a package's __init__ that Python runs first is not counted (it is no edge)."""
  package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
  out = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    else:
      continue
    for t in targets:
      while t and t not in modules:  # `import looprec.models.base.x` style: its longest module prefix
        t = t.rpartition(".")[0]
      if t and t != name:
        out.add(t)
  return out


def find_cycle(graph: dict) -> list | None:
  """A cycle [a, b, ..., a] of the directed graph (node -> successors), or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state and (cycle := visit(nxt)):
        return cycle
    state[node] = "done"
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_no_import_cycle_among_looprec_modules():
  modules = module_files()
  graph = {name: imported(name, path, modules) for name, path in modules.items()}
  assert "looprec.models" not in graph["looprec.config"]
  assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_config_names_no_kind():
  text = open(os.path.join(PACKAGE, "config.py")).read()
  assert not [kind for kind in C.KINDS if f'"{kind}"' in text or f"'{kind}'" in text]


# ---------------------------------------------------------------- a new kind, in a module of its own

RELAXED = '''
"""model.kind=relaxed: the looped model whose loop moves the state only part of the way to the block's output."""
import dataclasses

from looprec.config import ConfigError, KindOptions, ModelConfig, register_kind
from looprec.models.looped import LoopedTransformer


@dataclasses.dataclass(frozen=True)
class Options(KindOptions):
  rate: float = 0.5  # h <- h + rate (block(h) - h)

  def validate(self, cfg: ModelConfig):
    if not 0.0 < self.rate <= 1.0:
      raise ConfigError(f"model.rate={self.rate} must be in (0, 1]")


@register_kind("relaxed", Options)
@dataclasses.dataclass(frozen=True)
class Relaxed(LoopedTransformer):
  def loop_step(self, params, tokens_BxT, *, rng=None, per_layer=False):
    h_BxTxD, block = super().loop_step(params, tokens_BxT, rng=rng, per_layer=per_layer)
    rate = self.cfg.options.rate

    def step(h_BxTxD, t, key):
      out_BxTxD, layers = block(h_BxTxD, t, key)
      return h_BxTxD + rate * (out_BxTxD - h_BxTxD), layers

    return h_BxTxD, step
'''


@pytest.fixture
def relaxed(tmp_path, monkeypatch):
  """The module of kind `relaxed`, imported from a temporary folder (which registers it); unregistered after."""
  with temporary_module(tmp_path, monkeypatch, "relaxed_kind", RELAXED, C.KINDS, "relaxed") as module:
    yield module


def test_a_new_kind_is_configured_trained_swept_halted_and_analyzed(relaxed, tmp_path):
  assert list(models.KINDS)[-1] == "relaxed" and models.KINDS["relaxed"].model is relaxed.Relaxed
  cfg = C.override(ModelConfig(d_model=16, n_heads=2), ["rate=0.25", "kind=relaxed"])  # either order
  cfg.validate()
  assert (cfg.kind, cfg.rate, cfg.options) == ("relaxed", 0.25, relaxed.Options(rate=0.25))
  assert C.from_dict(ModelConfig, C.to_dict(cfg)) == cfg and C.to_dict(cfg)["rate"] == 0.25
  task = data.make_task(ChainDataConfig(n_entities=8, n_relations=2, seq_len=6, n_eval=16))
  model = models.build(cfg, task.vocab.size)
  assert isinstance(model, relaxed.Relaxed)
  # rate 1 is the looped model
  params = model.init(jax.random.PRNGKey(0))
  tokens_BxT = task.eval_split(2)["tokens"]
  full = models.build(C.override(cfg, ["rate=1"]), task.vocab.size)
  looped = models.build(C.override(cfg, ["kind=looped"]), task.vocab.size)
  np.testing.assert_allclose(full.apply(params, tokens_BxT, 3), looped.apply(params, tokens_BxT, 3), atol=1e-5)
  assert not np.allclose(model.apply(params, tokens_BxT, 3), looped.apply(params, tokens_BxT, 3), atol=1e-3)

  mesh = sharding.make_mesh()
  result = train.train_model("relaxed", model, Recurrence.parse("fixed:2"), 6,
                             TrainConfig(batch_size=8, warmup_steps=1, eval_every=6, checkpoint_every=6, log_every=3),
                             task, mesh, str(tmp_path / "run"), 0, {})
  assert result.steps == 6
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(result.params))
  splits = {"2hop_test": task.eval_split(2), "3hop_test": task.eval_split(3)}
  out = analysis.analyze_model(model, result.params, splits, 4, ["kl_entropy", "gate:q=0.5"], halt_loops=5,
                               margin_loops=3, mesh=mesh, batch_size=8)
  assert [len(out["sweep"][s]) for s in splits] == [5, 5]
  assert [p.partition(":")[0] for p in out["halting"]] == ["kl_entropy"]  # no exit gate: no gate policy
  assert all(1 <= row["mean_loops"] <= 5 for table in out["halting"].values() for row in table.values())
  assert set(out["margins"]) == set(splits)


@pytest.mark.parametrize("overrides, message", [
    (["kind=relaxed", "rate=1.5"], "model.rate=1.5 must be in (0, 1]"),
    (["kind=relaxed", "rate=fast"], "override rate='fast': expected float"),
    (["rate=0.75"], "model.rate=0.75: model.kind='looped' has no rate (an option of relaxed)"),
])
def test_a_new_kinds_bad_option_is_a_one_line_error_naming_it(relaxed, overrides, message):
  del relaxed
  with pytest.raises(ConfigError) as e:
    C.override(ModelConfig(), overrides).validate()
  assert str(e.value) == message
