"""Bits per byte and perplexity, checked by hand on cases whose answer is known."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from dept_jax import config_lib, evaluation, model


def test_bits_per_byte_by_hand():
  # 12 tokens of 3 bytes each, each predicted with probability 1/8: 3 bits per token, 1 per byte.
  nll = 12 * math.log(8)
  assert math.isclose(evaluation.bits_per_byte(nll, 36), 1.0)
  s = evaluation.summarize(nll, 12, 36)
  assert math.isclose(s["loss"], math.log(8)) and math.isclose(s["perplexity"], 8.0)


def test_uniform_model_scores_log_vocab_per_token():
  """A zero output table gives uniform logits over the real vocabulary (padding excluded), so the
  loss is ln(V) for every counted token, whatever the inputs; padding targets (-1) do not count."""
  cfg = config_lib.base_config().model
  body = model.init_body(cfg, jax.random.key(0))
  embed = {"table": jnp.zeros((24, cfg.d_model))}
  V = 20
  tokens = np.array([[3, 5, 7, 9, 11, -1, -1], [1, 2, 3, 4, 5, 6, 7]], np.int32)
  res = evaluation.evaluate_source(body, embed, V, cfg, [{"tokens": tokens, "bytes": 22}])
  assert res["tokens"] == 4 + 6
  np.testing.assert_allclose(res["loss"], math.log(V), rtol=1e-6)
  np.testing.assert_allclose(res["bits_per_byte"], 10 * math.log(V) / (22 * math.log(2)),
                             rtol=1e-6)
