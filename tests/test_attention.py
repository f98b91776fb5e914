"""model.attention=dot_product (jax.nn.dot_product_attention) computes the einsum attention."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from looprec import models
from looprec.config import ConfigError, ModelConfig

CFG = ModelConfig(d_model=32, n_heads=4, n_layers=2, pos_emb="rope", attn_window=3, injection="add")


def logits(cfg, params, tokens_BxT):
  return models.build(cfg, 13).apply(params, tokens_BxT, 3)


def test_dot_product_attention_equals_einsum_attention():
  """Same params, right-padded batch, window and rope masks: logits agree to 1e-5 in float32; in bfloat16 the
  fused path is as close to the float32 result as the einsum path is (within 1.5x its error, plus 1e-3)."""
  params = models.build(CFG, 13).init(jax.random.PRNGKey(0), 9)
  tokens = np.random.default_rng(0).integers(1, 13, (6, 9)).astype(np.int32)
  tokens[:, 6:] = 0
  tokens[2, 3:] = 0
  tokens = jnp.asarray(tokens)
  ref = logits(CFG, params, tokens)
  fused = logits(dataclasses.replace(CFG, attention="dot_product"), params, tokens)
  np.testing.assert_allclose(fused, ref, atol=1e-5, rtol=0)
  full = dataclasses.replace(CFG, attn_window=0)  # the window mask matters, so the check above can fail
  assert float(jnp.abs(logits(full, params, tokens) - ref).max()) > 1e-3
  np.testing.assert_allclose(logits(dataclasses.replace(full, attention="dot_product"), params, tokens),
                             logits(full, params, tokens), atol=1e-5, rtol=0)
  err = {a: float(jnp.abs(logits(dataclasses.replace(CFG, attention=a, dtype="bfloat16"), params, tokens) - ref).max())
         for a in ("einsum", "dot_product")}
  assert err["dot_product"] <= 1.5 * err["einsum"] + 1e-3, err


def test_dot_product_attention_rejects_dropout_and_unknown_kinds():
  with pytest.raises(ConfigError, match="model.attention=dot_product has no dropout"):
    dataclasses.replace(CFG, attention="dot_product", attn_dropout=0.1).validate()
  with pytest.raises(ConfigError, match="model.attention='flash'"):
    dataclasses.replace(CFG, attention="flash").validate()
