"""looprec: recurrent-depth (looped) transformers in JAX.

    from looprec import LoopedTransformer, ModelConfig, sweep, halt, margins
    model = LoopedTransformer(ModelConfig(d_model=64, n_layers=1), vocab_size=32)
    params = model.init(jax.random.PRNGKey(0))
    logits_BxTxV = model.apply(params, tokens_BxT, n_loops=8)
    per_loop_BxV = model.loop_logits(params, tokens_BxT, read_pos_B, n_loops=16)   # R x B x V
    acc = sweep(model, params, splits, max_loops=20)             # accuracy[split][R], one compile
    table = halt(model, params, splits, "kl_entropy")            # adaptive halting per split
    curves = margins(model, params, splits, n_loops=50)          # overthinking: margin per loop
"""
from looprec.config import ChainDataConfig, EvalConfig, ModelConfig, ModelRun, Recurrence, TrainConfig
from looprec.model import LoopedTransformer

__all__ = ["ChainDataConfig", "EvalConfig", "LoopedTransformer", "ModelConfig", "ModelRun", "Recurrence",
           "TrainConfig", "halt", "margins", "sweep"]


def __getattr__(name):
  """sweep, halt and margins come from looprec.analysis, imported on first use (it pulls in matplotlib and
  orbax, which the CLI's error paths should not wait for)."""
  if name in ("sweep", "halt", "margins"):
    from looprec import analysis  # pylint: disable=import-outside-toplevel
    return getattr(analysis, name)
  raise AttributeError(f"module 'looprec' has no attribute {name!r}")
