"""Model kinds behind one interface (`base.LoopedModel`), built from the config by `build`.

A kind is one module in this package whose `Model` class implements the interface; adding a kind is that file
and one line in KINDS.
"""
from __future__ import annotations

import importlib

from looprec.config import ConfigError, ModelConfig
from looprec.models.base import LoopedBase, LoopedModel, count_params, gather_positions, params_checksum

# model.kind -> the module holding its `Model`
KINDS = {
    "looped": "looprec.models.looped",  # the paper's: embed -> (L layers) x R -> final norm -> tied head
    "prelude_core_coda": "looprec.models.prelude_core_coda",  # non-looped begin / end layers around the loop
    "hyperloop": "looprec.models.hyperloop",  # n residual streams mixed by per-loop gates, merged before the end
    "exit_gate": "looprec.models.exit_gate",  # Ouro: a learned per-loop exit probability, entropy-regularised loss
    "training_free": "looprec.models.training_free",  # inference only: a trained stack's window looped, damped
}


def build(cfg: ModelConfig, vocab_size: int) -> LoopedModel:
  """The model of kind cfg.kind; ConfigError for an unknown kind."""
  if cfg.kind not in KINDS:
    raise ConfigError(f"model.kind={cfg.kind!r} is not one of {', '.join(KINDS)}")
  return importlib.import_module(KINDS[cfg.kind]).Model(cfg, vocab_size)


__all__ = ["KINDS", "LoopedBase", "LoopedModel", "build", "count_params", "gather_positions", "params_checksum"]
