"""looprec: recurrent-depth (looped) transformers in JAX.

    from looprec import LoopedTransformer, ModelConfig
    model = LoopedTransformer(ModelConfig(d_model=64, n_layers=1), vocab_size=32)
    params = model.init(jax.random.PRNGKey(0))
    logits_BxTxV = model.apply(params, tokens_BxT, n_loops=8)
    per_loop_BxV = model.loop_logits(params, tokens_BxT, read_pos_B, n_loops=16)   # R x B x V
"""
from looprec.config import ChainDataConfig, EvalConfig, ModelConfig, ModelRun, Recurrence, TrainConfig
from looprec.model import LoopedTransformer

__all__ = ["ChainDataConfig", "EvalConfig", "LoopedTransformer", "ModelConfig", "ModelRun", "Recurrence",
           "TrainConfig"]
