"""Model kinds behind one interface (`base.LoopedModel`), built from the config by `build`.

A kind owns everything about itself in its own module: the `Model` class (usually a `LoopedBase` subclass), its
hyperparameters (a frozen `config.KindOptions` subclass with defaults and its own `validate`) and its registration,
`@config.register_kind(name, Options)` on the class. The config (`config.ModelConfig`) holds the fields every kind
shares and the kind's options, read, set and saved flat (`model.n_streams=2`), and names no kind. Adding a kind is
that one module, imported before its config is read; the built-in ones are imported here, in the order below.

    @dataclasses.dataclass(frozen=True)
    class Options(config.KindOptions):
      scale: float = 1.0
      def validate(self, cfg): ...         # ConfigError("model.scale=... must be > 0")

    @config.register_kind("scaled", Options)
    @dataclasses.dataclass(frozen=True)
    class Scaled(LoopedTransformer): ...  # reads self.cfg.options.scale
"""
from __future__ import annotations

from looprec.config import KINDS, ConfigError, ModelConfig, one_of
from looprec.models.base import (LoopedBase, LoopedModel, answer_correct, count_params, gather_positions,
                                 params_checksum)
# the built-in kinds, registered on import in this order (KINDS' order; the first is the default kind)
from looprec.models import looped  # the paper's: embed -> (L layers) x R -> final norm -> tied head
from looprec.models import prelude_core_coda  # non-looped begin / end layers around the loop
from looprec.models import hyperloop  # n residual streams mixed by per-loop gates, merged before the end
from looprec.models import exit_gate  # Ouro: a learned per-loop exit probability, entropy-regularised loss
from looprec.models import training_free  # inference only: a trained stack's window looped, damped


def build(cfg: ModelConfig, vocab_size: int) -> LoopedModel:
  """The model of kind cfg.kind; ConfigError for an unknown kind."""
  if cfg.kind not in KINDS:
    raise ConfigError(one_of("model.kind", cfg.kind, KINDS))
  return KINDS[cfg.kind].model(cfg, vocab_size)


__all__ = ["KINDS", "LoopedBase", "LoopedModel", "answer_correct", "build", "count_params", "exit_gate",
           "gather_positions", "hyperloop", "looped", "params_checksum", "prelude_core_coda", "training_free"]
