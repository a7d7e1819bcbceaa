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


def test_eval_model_is_spread_over_the_mesh_and_scores_the_same():
  """Eval places one source's model by the training layout over all 8 devices (embed dim over
  fsdp, heads/mlp over tensor), leaving whole a dimension the mesh does not divide (23 table rows),
  and scores exactly what the unsharded model scores."""
  from dept_jax.mesh import fitted_shardings, make_mesh
  cfg = config_lib.base_config().model
  mesh = make_mesh({"source": 2, "data": 1, "fsdp": 2, "tensor": 2})
  body = model.init_body(cfg, jax.random.key(0))
  embed = model.init_embed(cfg, 23, jax.random.key(1))
  axes = {"body": model.body_axes(cfg), "embed": model.embed_axes(cfg, 23)}
  sh = fitted_shardings(mesh, axes, {"body": body, "embed": embed})
  sh_body, sh_embed = sh["body"], sh["embed"]
  assert tuple(sh_body["blocks"]["wq"].spec) == (None, "fsdp", "tensor")
  assert tuple(sh_embed["table"].spec) == (None, "fsdp")  # 23 rows: not split over tensor
  placed_body, placed_embed = jax.device_put((body, embed), (sh_body, sh_embed))
  wq = placed_body["blocks"]["wq"]
  assert wq.addressable_shards[0].data.size * 4 == wq.size  # a quarter of it on each device
  tokens = np.random.default_rng(0).integers(0, 23, (4, 17)).astype(np.int32)
  batches = [{"tokens": tokens, "bytes": 100}]
  a = evaluation.evaluate_source(body, embed, 23, cfg, batches)
  b = evaluation.evaluate_source(placed_body, placed_embed, 23, cfg, batches)
  np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)
  assert b["tokens"] == a["tokens"] == 4 * 16
