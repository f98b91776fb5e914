"""looprec: recurrent-depth (looped) transformers in JAX.

    from looprec import ModelConfig, build_model, sweep, halt, margins, logit_lens
    model = build_model(ModelConfig(kind="looped", d_model=64, n_layers=1), vocab_size=32)  # looprec.models.KINDS
    params = model.init(jax.random.PRNGKey(0))
    logits_BxTxV = model.apply(params, tokens_BxT, n_loops=8)
    per_loop_BxV = model.loop_logits(params, tokens_BxT, read_pos_B, n_loops=16)   # R x B x V
    acc = sweep(model, params, splits, max_loops=20)             # accuracy[split][R], one compile
    table = halt(model, params, splits, "kl_entropy")            # adaptive halting per split
    curves = margins(model, params, splits, n_loops=50)          # overthinking: margin per loop
    lens = logit_lens(model, params, probes, n_loops=4)           # bridge / answer decodable per loop, layer
"""
from looprec.config import (ChainDataConfig, CompositionDataConfig, EvalConfig, ModelConfig, ModelRun, Recurrence,
                            TrainConfig)
from looprec.models import LoopedModel, build as build_model
from looprec.models.looped import LoopedTransformer

__all__ = ["ChainDataConfig", "CompositionDataConfig", "EvalConfig", "LoopedModel", "LoopedTransformer", "ModelConfig",
           "ModelRun", "Recurrence", "TrainConfig", "build_model", "halt", "logit_lens", "margins", "sweep"]


def __getattr__(name):
  """sweep, halt, margins (looprec.analysis) and logit_lens (looprec.lens) are imported on first use: they pull in
  matplotlib and orbax, which the CLI's error paths should not wait for."""
  if name in ("sweep", "halt", "margins"):
    from looprec import analysis  # pylint: disable=import-outside-toplevel
    return getattr(analysis, name)
  if name == "logit_lens":
    from looprec import lens  # pylint: disable=import-outside-toplevel
    return lens.logit_lens
  raise AttributeError(f"module 'looprec' has no attribute {name!r}")
