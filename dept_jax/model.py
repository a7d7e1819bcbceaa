"""Llama-style decoder as Flax linen modules whose parameters are two plain pytrees: a shared body
and a per-source embedding.

body = {'blocks': {name: [n_layers, ...]}, 'final_norm': [d_model]}   (layers stacked by nn.scan)
embed = {'table': [vocab, d_model]} plus {'head': [vocab, d_model]} when untied.

The modules (`Block`, `Body`, `Embed`) declare every parameter with its logical axis names
(`nn.with_logical_partitioning`; nn.scan adds 'layers'), so `body_axes`/`embed_axes` read the
sharding layout from the model itself and mesh.LOGICAL_RULES maps it onto the mesh. The functions
below (`forward`, `loss_fn`, ...) apply the modules to plain param dicts: DEPT averages, banks,
checkpoints and exports those dicts without knowing about Flax.

Every leaf is float32; `model.dtype` is the compute dtype. RoPE uses the rotate-half convention of
Hugging Face's Llama, so an export needs no weight permutation.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

PyTree = Any

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def compute_dtype(cfg):
  """model.dtype, with 'auto' resolved for the backend: bfloat16 on TPU/GPU, float32 on CPU
  (no AMX on the CPUs measured: bfloat16 bought nothing there, bench/RESULTS.md)."""
  if cfg.dtype == "auto":
    return jnp.dtype(jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)
  return jnp.dtype(cfg.dtype)


def static_config(cfg):
  """The model config as a hashable value, for jit's static arguments and module fields."""
  if isinstance(cfg, ml_collections.FrozenConfigDict):
    return cfg
  return ml_collections.FrozenConfigDict(cfg if isinstance(cfg, ml_collections.ConfigDict)
                                         else dict(cfg))


def head_dim(cfg) -> int:
  return cfg.d_model // cfg.n_heads


def n_kv_heads(cfg) -> int:
  return cfg.n_kv_heads if cfg.n_kv_heads > 0 else cfg.n_heads


def count_params(tree) -> int:
  return sum(int(math.prod(x.shape)) for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------- initializers


def truncated_normal(std: float):
  """std * a normal truncated at +-3 (not rescaled: the paper-style init of the earlier code)."""
  def init(key, shape, dtype=jnp.float32):
    return std * jax.random.truncated_normal(key, -3.0, 3.0, shape, dtype)
  return init


def _param(module: nn.Module, name: str, shape, axes, init):
  """A float32 parameter carrying its logical axis names."""
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


# ----------------------------------------------------------------------------- layers


def rms_norm(x, scale, eps):
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (x32 * scale).astype(x.dtype)


def rope_tables(seq_len: int, hd: int, theta: float, offset=0):
  inv_freq = 1.0 / (theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
  pos = jnp.arange(seq_len, dtype=jnp.float32) + offset
  freqs_LxH2 = pos[:, None] * inv_freq[None, :]
  freqs_LxH = jnp.concatenate([freqs_LxH2, freqs_LxH2], axis=-1)
  return jnp.cos(freqs_LxH), jnp.sin(freqs_LxH)


def apply_rope(x_BxLxNxH, cos_LxH, sin_LxH):
  h2 = x_BxLxNxH.shape[-1] // 2
  x1, x2 = x_BxLxNxH[..., :h2], x_BxLxNxH[..., h2:]
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  cos, sin = cos_LxH[None, :, None, :], sin_LxH[None, :, None, :]
  out = x_BxLxNxH.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin
  return out.astype(x_BxLxNxH.dtype)


def explicit_attention(q_BxLxNxH, k_BxSxKxH, v_BxSxKxH, offset=0):
  """Causal attention written out: query i (at absolute position offset + i) sees keys 0..offset+i.

  Heads move in front once ([B, KV, G, L, hd]), so both products are batched matmuls over (B, KV)
  with no further transposes; scores and softmax are float32. On CPU it ran at or above the speed
  of jax.nn.dot_product_attention's XLA path (bench/RESULTS.md), and it serves decoding from a KV
  cache (the offset) with the same code.
  """
  B, L, N, hd = q_BxLxNxH.shape
  S, KV = k_BxSxKxH.shape[1], k_BxSxKxH.shape[2]
  scale = jnp.asarray(hd ** -0.5, q_BxLxNxH.dtype)
  q = (q_BxLxNxH * scale).reshape(B, L, KV, N // KV, hd).transpose(0, 2, 3, 1, 4)  # B KV G L hd
  k = k_BxSxKxH.transpose(0, 2, 1, 3)  # B KV S hd
  v = v_BxSxKxH.transpose(0, 2, 1, 3)
  scores = jnp.einsum("bkgqh,bksh->bkgqs", q, k, preferred_element_type=jnp.float32)
  visible_LxS = jnp.arange(S)[None, :] <= (offset + jnp.arange(L))[:, None]
  probs = jax.nn.softmax(jnp.where(visible_LxS, scores, -1e30), axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgqs,bksh->bkgqh", probs, v)  # B KV G L hd
  return out.transpose(0, 3, 1, 2, 4).reshape(B, L, N, hd)


def attention(q_BxLxNxH, k_BxSxKxH, v_BxSxKxH, cfg, causal_offset=None):
  """Causal attention by `model.attention`: auto = cuDNN's fused kernel through
  jax.nn.dot_product_attention on GPU, the explicit path elsewhere; xla = jax.nn's XLA path.
  Decoding with a KV cache (causal_offset set) always takes the explicit path."""
  impl = cfg.attention
  off_gpu_auto = impl == "auto" and jax.default_backend() != "gpu"
  if causal_offset is not None or impl == "explicit" or off_gpu_auto:
    return explicit_attention(q_BxLxNxH, k_BxSxKxH, v_BxSxKxH,
                              0 if causal_offset is None else causal_offset)
  # implementation=None lets jax pick cuDNN's fused kernel where it applies.
  return jax.nn.dot_product_attention(q_BxLxNxH, k_BxSxKxH, v_BxSxKxH, is_causal=True,
                                      implementation=None if impl == "auto" else impl)


class Block(nn.Module):
  """One pre-norm decoder block: GQA attention with RoPE, then a SwiGLU MLP.

  Projections run on [B*L, D] rows: plain 2-D matmuls whose weight gradients need no transposes
  (faster on CPU than [B, L, D] operands, bench/RESULTS.md). With `cache` ({'k', 'v'}: [B, T, KV,
  hd]) the new keys/values are written at `offset` and attention reads the whole cache (decoding).
  """
  cfg: Any

  @nn.compact
  def __call__(self, x_BxLxD, cos, sin, cache=None, offset=None):
    cfg = self.cfg
    dt = compute_dtype(cfg)
    B, L, D = x_BxLxD.shape
    H, KV, hd, F = cfg.n_heads, n_kv_heads(cfg), head_dim(cfg), cfg.d_ff
    std = cfg.init_std
    out_std = std / math.sqrt(2 * cfg.n_layers)  # residual-branch outputs shrink with depth
    ones = nn.initializers.ones
    p = functools.partial(_param, self)
    attn_norm = p("attn_norm", (D,), (None,), ones)
    wq = p("wq", (D, H * hd), ("embed", "heads"), truncated_normal(std))
    wk = p("wk", (D, KV * hd), ("embed", "kv_heads"), truncated_normal(std))
    wv = p("wv", (D, KV * hd), ("embed", "kv_heads"), truncated_normal(std))
    wo = p("wo", (H * hd, D), ("heads", "embed"), truncated_normal(out_std))
    mlp_norm = p("mlp_norm", (D,), (None,), ones)
    w_gate = p("w_gate", (D, F), ("embed", "mlp"), truncated_normal(std))
    w_up = p("w_up", (D, F), ("embed", "mlp"), truncated_normal(std))
    w_down = p("w_down", (F, D), ("mlp", "embed"), truncated_normal(out_std))

    h_TxD = rms_norm(x_BxLxD, attn_norm, cfg.norm_eps).reshape(B * L, D)
    q = (h_TxD @ wq.astype(dt)).reshape(B, L, H, hd)
    k = (h_TxD @ wk.astype(dt)).reshape(B, L, KV, hd)
    v = (h_TxD @ wv.astype(dt)).reshape(B, L, KV, hd)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    new_cache = None
    if cache is not None:
      k_cache = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype),
                                             (0, offset, 0, 0))
      v_cache = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype),
                                             (0, offset, 0, 0))
      new_cache = {"k": k_cache, "v": v_cache}
      o = attention(q, k_cache.astype(dt), v_cache.astype(dt), cfg, causal_offset=offset)
    else:
      o = attention(q, k, v, cfg)
    x_BxLxD = x_BxLxD + (o.reshape(B * L, H * hd) @ wo.astype(dt)).reshape(B, L, D)
    h_TxD = rms_norm(x_BxLxD, mlp_norm, cfg.norm_eps).reshape(B * L, D)
    gate_TxF = jax.nn.silu(h_TxD @ w_gate.astype(dt))
    mlp_TxD = (gate_TxF * (h_TxD @ w_up.astype(dt))) @ w_down.astype(dt)
    return x_BxLxD + mlp_TxD.reshape(B, L, D), new_cache


class Body(nn.Module):
  """The shared body: `n_layers` blocks under nn.scan (one compiled layer; `scan_layers=False`
  unrolls the same scan), each under the named remat policy `model.remat`, then the final norm.
  Input and output are hidden states; `cache` is the stacked per-layer KV cache when decoding."""
  cfg: Any

  @nn.compact
  def __call__(self, x_BxLxD, offset=0, cache=None):
    cfg = self.cfg
    x_BxLxD = x_BxLxD.astype(compute_dtype(cfg))
    cos, sin = rope_tables(x_BxLxD.shape[1], head_dim(cfg), cfg.rope_theta, offset)
    block = Block
    if cfg.remat != "none":
      block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
    layers = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                     in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast),
                     length=cfg.n_layers, unroll=1 if cfg.scan_layers else cfg.n_layers,
                     metadata_params={nn.PARTITION_NAME: "layers"})
    x_BxLxD, new_cache = layers(cfg, name="blocks")(
        x_BxLxD, cos, sin, cache, None if cache is None else offset)
    final_norm = _param(self, "final_norm", (cfg.d_model,), (None,), nn.initializers.ones)
    return rms_norm(x_BxLxD, final_norm, cfg.norm_eps), new_cache


class Embed(nn.Module):
  """A source's token table, tied with the LM head unless `tie_embeddings` is off. Rows at or past
  the source's `vocab_size` are padding: never looked up, and masked out of the softmax."""
  cfg: Any
  rows: int

  def setup(self):
    cfg = self.cfg
    shape, axes, init = (self.rows, cfg.d_model), ("vocab", "embed"), truncated_normal(cfg.init_std)
    self.table = _param(self, "table", shape, axes, init)
    if not cfg.tie_embeddings:
      self.head = _param(self, "head", shape, axes, init)

  def __call__(self, tokens_BxL):
    return jnp.take(self.table, tokens_BxL, axis=0).astype(compute_dtype(self.cfg))

  def logits(self, h_BxLxD, vocab_size):
    """float32 logits over the (padded) table; rows at or past `vocab_size` never enter the
    softmax."""
    head = self.table if self.cfg.tie_embeddings else self.head
    logits_BxLxV = jnp.einsum("bld,vd->blv", h_BxLxD, head.astype(h_BxLxD.dtype),
                              preferred_element_type=jnp.float32)
    valid_V = jnp.arange(head.shape[0]) < vocab_size
    return jnp.where(valid_V, logits_BxLxV, -1e30)


# ----------------------------------------------------------------------------- plain-pytree API


def _body_module(cfg) -> Body:
  return Body(static_config(cfg))


def _embed_module(cfg, rows: int) -> Embed:
  return Embed(static_config(cfg), int(rows))


def _boxed_body(cfg, key):
  return _body_module(cfg).init(key, jnp.zeros((1, 1, cfg.d_model), jnp.float32))["params"]


def _boxed_embed(cfg, rows, key):
  return _embed_module(cfg, rows).init(key, jnp.zeros((1, 1), jnp.int32))["params"]


def init_body(cfg, key) -> PyTree:
  return nn.unbox(_boxed_body(cfg, key))


def init_embed(cfg, vocab_size: int, key) -> PyTree:
  return nn.unbox(_boxed_embed(cfg, vocab_size, key))


def _axes(boxed) -> PyTree:
  """The params tree with each leaf its tuple of logical axis names."""
  specs = nn.get_partition_spec(boxed)
  return jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def body_axes(cfg) -> PyTree:
  return _axes(jax.eval_shape(functools.partial(_boxed_body, static_config(cfg)),
                              jax.random.key(0)))


def embed_axes(cfg, rows: int) -> PyTree:
  return _axes(jax.eval_shape(functools.partial(_boxed_embed, static_config(cfg), rows),
                              jax.random.key(0)))


def body_forward(body, x_BxLxD, cfg):
  """The shared body: blocks then final norm. Input and output are hidden states."""
  return _body_module(cfg).apply({"params": body}, x_BxLxD)[0]


def body_with_cache(body, x_BxLxD, offset, cache, cfg):
  """Decoding: run tokens at positions offset.. through the body, writing their keys/values into
  `cache`. Returns (final-normed hidden states, new cache)."""
  return _body_module(cfg).apply({"params": body}, x_BxLxD, offset, cache)


def embed_tokens(embed, tokens_BxL, cfg):
  rows = embed["table"].shape[0]
  return _embed_module(cfg, rows).apply({"params": embed}, tokens_BxL)


def output_logits(embed, h_BxLxD, vocab_size, cfg):
  rows = embed["table"].shape[0]
  return _embed_module(cfg, rows).apply({"params": embed}, h_BxLxD, vocab_size,
                                        method=Embed.logits)


def forward(body, embed, tokens_BxL, vocab_size, cfg):
  h = body_forward(body, embed_tokens(embed, tokens_BxL, cfg), cfg)
  return output_logits(embed, h, vocab_size, cfg)


def token_nll(body, embed, inputs_BxL, targets_BxL, vocab_size, cfg):
  """Per-token negative log-likelihood (nats) and a mask of the targets that count (target >= 0)."""
  logits_BxLxV = forward(body, embed, inputs_BxL, vocab_size, cfg)
  mask_BxL = targets_BxL >= 0
  safe_targets = jnp.where(mask_BxL, targets_BxL, 0)
  logz = jax.nn.logsumexp(logits_BxLxV, axis=-1)
  target_logit = jnp.take_along_axis(logits_BxLxV, safe_targets[..., None], axis=-1)[..., 0]
  return jnp.where(mask_BxL, logz - target_logit, 0.0), mask_BxL


def loss_fn(params, batch, vocab_size, cfg):
  """Mean next-token loss over the tokens that count. params = {'body', 'embed'}."""
  nll_BxL, mask_BxL = token_nll(params["body"], params["embed"], batch["inputs"],
                                batch["targets"], vocab_size, cfg)
  count = jnp.maximum(mask_BxL.sum(), 1)
  return nll_BxL.sum() / count, {"nll_sum": nll_BxL.sum(), "tokens": mask_BxL.sum(),
                                 "nll_per_row": nll_BxL.sum(-1), "tokens_per_row": mask_BxL.sum(-1)}
