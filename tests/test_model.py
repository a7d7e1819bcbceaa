"""The Flax model: plain param pytrees in the layout averaging, banks and the export rely on, logical
axis names read from the modules, and the same numbers whatever the scan/remat settings."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dept_jax import config_lib, model
from dept_jax.mesh import make_mesh, tree_shardings


def small_cfg(**kw):
  c = config_lib.base_config().model
  c.update(d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=48)
  c.update(kw)
  return model.static_config(c)


def test_params_are_plain_stacked_pytrees():
  cfg = small_cfg(tie_embeddings=False)
  body = model.init_body(cfg, jax.random.key(0))
  embed = model.init_embed(cfg, 50, jax.random.key(1))
  assert set(body) == {"blocks", "final_norm"} and isinstance(body["blocks"], dict)
  shapes = {k: v.shape for k, v in body["blocks"].items()}
  assert shapes == {"attn_norm": (3, 32), "mlp_norm": (3, 32), "wq": (3, 32, 32),
                    "wk": (3, 32, 16), "wv": (3, 32, 16), "wo": (3, 32, 32),
                    "w_gate": (3, 32, 48), "w_up": (3, 32, 48), "w_down": (3, 48, 32)}
  assert {k: v.shape for k, v in embed.items()} == {"table": (50, 32), "head": (50, 32)}
  assert all(isinstance(x, jax.Array) and x.dtype == jnp.float32
             for x in jax.tree.leaves((body, embed)))
  # Each layer draws its own weights; norms start at one.
  assert not np.allclose(body["blocks"]["wq"][0], body["blocks"]["wq"][1])
  np.testing.assert_array_equal(body["final_norm"], np.ones(32))
  # std * normal truncated at 3 std, residual outputs scaled down by sqrt(2 * n_layers)
  assert abs(float(body["blocks"]["wq"].std()) - 0.02 * 0.986) < 0.002
  assert float(jnp.abs(body["blocks"]["wq"]).max()) <= 0.06 + 1e-7
  assert abs(float(body["blocks"]["wo"].std()) - 0.02 / np.sqrt(6) * 0.986) < 0.001


def test_logical_axes_come_from_the_modules_and_map_onto_the_mesh():
  cfg = small_cfg()
  axes = model.body_axes(cfg)
  assert axes["blocks"]["wq"] == ("layers", "embed", "heads")
  assert axes["blocks"]["w_down"] == ("layers", "mlp", "embed")
  assert axes["blocks"]["attn_norm"] == ("layers", None)
  assert axes["final_norm"] == (None,)
  assert model.embed_axes(cfg, 64) == {"table": ("vocab", "embed")}
  mesh = make_mesh({"source": 2, "data": 1, "fsdp": 2, "tensor": 2})
  sh = tree_shardings(mesh, axes, stacked=True)
  assert tuple(sh["blocks"]["wk"].spec) == ("source", None, "fsdp", "tensor")
  assert tuple(sh["blocks"]["wo"].spec) == ("source", None, "tensor", "fsdp")


@pytest.mark.parametrize("overrides", [
    {"scan_layers": False}, {"remat": "none"}, {"remat": "full"}, {"remat": "dots"}])
def test_scan_and_remat_settings_compute_the_same_loss_and_gradients(overrides):
  base = small_cfg()
  other = small_cfg(**overrides)
  params = {"body": model.init_body(base, jax.random.key(0)),
            "embed": model.init_embed(base, 40, jax.random.key(1))}
  # Same param tree whatever the settings: checkpoints move between them.
  assert jax.tree.structure(model.init_body(other, jax.random.key(0))) == jax.tree.structure(
      params["body"])
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 37, (2, 17)), jnp.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}

  def loss_and_grads(cfg):
    return jax.jit(jax.value_and_grad(lambda p: model.loss_fn(p, batch, 37, cfg)[0]))(params)
  (l1, g1), (l2, g2) = loss_and_grads(base), loss_and_grads(other)
  np.testing.assert_allclose(float(l2), float(l1), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-7)


def test_forward_is_causal():
  """Changing a later token never changes an earlier position's logits."""
  cfg = small_cfg()
  body, embed = model.init_body(cfg, jax.random.key(2)), model.init_embed(cfg, 30, jax.random.key(3))
  a = jnp.asarray([[1, 2, 3, 4, 5, 6]])
  b = a.at[0, 4].set(9)
  la, lb = model.forward(body, embed, a, 30, cfg), model.forward(body, embed, b, 30, cfg)
  np.testing.assert_allclose(np.asarray(lb[0, :4]), np.asarray(la[0, :4]), rtol=1e-6, atol=1e-6)
  assert not np.allclose(np.asarray(la[0, 4:]), np.asarray(lb[0, 4:]))
