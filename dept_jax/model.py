"""Llama-style decoder as pure functions of two pytrees: a shared body and a per-source embedding.

body = {'blocks': {name: [n_layers, ...]}, 'final_norm': [d_model]}   (layers stacked for scan)
embed = {'table': [vocab, d_model]} plus {'head': [vocab, d_model]} when untied.

Every leaf is float32; `model.dtype` is the compute dtype. RoPE uses the rotate-half convention of
Hugging Face's Llama, so an export needs no weight permutation.
"""
from __future__ import annotations

import math
from typing import Any

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
  (bench/RESULTS.md: without AMX, bfloat16 buys a CPU step ~10% and costs precision)."""
  if cfg.dtype == "auto":
    return jnp.dtype(jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)
  return jnp.dtype(cfg.dtype)


def static_config(cfg):
  """The model config as a hashable value, for jit's static arguments."""
  if isinstance(cfg, ml_collections.FrozenConfigDict):
    return cfg
  return ml_collections.FrozenConfigDict(cfg if isinstance(cfg, ml_collections.ConfigDict)
                                         else dict(cfg))


def head_dim(cfg) -> int:
  return cfg.d_model // cfg.n_heads


def n_kv_heads(cfg) -> int:
  return cfg.n_kv_heads if cfg.n_kv_heads > 0 else cfg.n_heads


def body_spec(cfg) -> dict:
  """name -> (shape, logical axes, init std or 'ones'); the one place the body's layout is defined."""
  L, D, F, hd = cfg.n_layers, cfg.d_model, cfg.d_ff, head_dim(cfg)
  H, KV = cfg.n_heads, n_kv_heads(cfg)
  std = cfg.init_std
  out_std = std / math.sqrt(2 * L)  # residual-branch outputs shrink with depth (GPT-2 style)
  return {
      "blocks": {
          "attn_norm": ((L, D), ("layers", None), "ones"),
          "wq": ((L, D, H * hd), ("layers", "embed", "heads"), std),
          "wk": ((L, D, KV * hd), ("layers", "embed", "kv_heads"), std),
          "wv": ((L, D, KV * hd), ("layers", "embed", "kv_heads"), std),
          "wo": ((L, H * hd, D), ("layers", "heads", "embed"), out_std),
          "mlp_norm": ((L, D), ("layers", None), "ones"),
          "w_gate": ((L, D, F), ("layers", "embed", "mlp"), std),
          "w_up": ((L, D, F), ("layers", "embed", "mlp"), std),
          "w_down": ((L, F, D), ("layers", "mlp", "embed"), out_std),
      },
      "final_norm": ((D,), (None,), "ones"),
  }


def embed_spec(cfg, vocab_size: int) -> dict:
  spec = {"table": ((vocab_size, cfg.d_model), ("vocab", "embed"), cfg.init_std)}
  if not cfg.tie_embeddings:
    spec["head"] = ((vocab_size, cfg.d_model), ("vocab", "embed"), cfg.init_std)
  return spec


def _is_spec(x) -> bool:
  return isinstance(x, tuple) and len(x) == 3 and isinstance(x[0], tuple)


def init_from_spec(spec: dict, key: jax.Array) -> PyTree:
  leaves, treedef = jax.tree.flatten(spec, is_leaf=_is_spec)
  keys = jax.random.split(key, len(leaves))
  out = []
  for (shape, _, init), k in zip(leaves, keys):
    if init == "ones":
      out.append(jnp.ones(shape, jnp.float32))
    else:
      out.append(init * jax.random.truncated_normal(k, -3.0, 3.0, shape, jnp.float32))
  return jax.tree.unflatten(treedef, out)


def axes_from_spec(spec: dict) -> PyTree:
  """Same tree as the params, each leaf its tuple of logical axis names."""
  return jax.tree.map(lambda s: s[1], spec, is_leaf=_is_spec)


def init_body(cfg, key):
  return init_from_spec(body_spec(cfg), key)


def init_embed(cfg, vocab_size: int, key):
  return init_from_spec(embed_spec(cfg, vocab_size), key)


def count_params(tree) -> int:
  return sum(int(math.prod(x.shape)) for x in jax.tree.leaves(tree))


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
  with no further transposes; scores and softmax are float32. In the CPU step it ran 0.96-1.09x
  (mostly above 1) the speed of jax.nn.dot_product_attention's XLA path (bench/RESULTS.md), and
  it serves decoding from a KV cache (the offset) with the same code.
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


def block(x_BxLxD, p, cfg, cos, sin, kv_cache=None, offset=None):
  """One pre-norm decoder block. `p` holds this layer's slice of body['blocks'].

  Projections run on [B*L, D] rows: plain 2-D matmuls whose weight gradients need no transposes
  (the demo step ran 1.13x faster on CPU than with [B, L, D] operands)."""
  dt = compute_dtype(cfg)
  B, L, D = x_BxLxD.shape
  H, KV, hd = cfg.n_heads, n_kv_heads(cfg), head_dim(cfg)
  h_TxD = rms_norm(x_BxLxD, p["attn_norm"], cfg.norm_eps).reshape(B * L, D)
  q = (h_TxD @ p["wq"].astype(dt)).reshape(B, L, H, hd)
  k = (h_TxD @ p["wk"].astype(dt)).reshape(B, L, KV, hd)
  v = (h_TxD @ p["wv"].astype(dt)).reshape(B, L, KV, hd)
  q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
  new_cache = None
  if kv_cache is not None:
    k_cache = jax.lax.dynamic_update_slice(kv_cache["k"], k.astype(kv_cache["k"].dtype),
                                           (0, offset, 0, 0))
    v_cache = jax.lax.dynamic_update_slice(kv_cache["v"], v.astype(kv_cache["v"].dtype),
                                           (0, offset, 0, 0))
    new_cache = {"k": k_cache, "v": v_cache}
    o = attention(q, k_cache.astype(dt), v_cache.astype(dt), cfg, causal_offset=offset)
  else:
    o = attention(q, k, v, cfg)
  x_BxLxD = x_BxLxD + (o.reshape(B * L, H * hd) @ p["wo"].astype(dt)).reshape(B, L, D)
  h_TxD = rms_norm(x_BxLxD, p["mlp_norm"], cfg.norm_eps).reshape(B * L, D)
  gate_TxF = jax.nn.silu(h_TxD @ p["w_gate"].astype(dt))
  mlp_TxD = (gate_TxF * (h_TxD @ p["w_up"].astype(dt))) @ p["w_down"].astype(dt)
  return x_BxLxD + mlp_TxD.reshape(B, L, D), new_cache


def body_forward(body, x_BxLxD, cfg):
  """The shared body: blocks then final norm. Input and output are hidden states."""
  x_BxLxD = x_BxLxD.astype(compute_dtype(cfg))
  cos, sin = rope_tables(x_BxLxD.shape[1], head_dim(cfg), cfg.rope_theta)

  def layer(x, p):
    return block(x, p, cfg, cos, sin)[0], None

  policy = REMAT_POLICIES[cfg.remat]
  if cfg.remat != "none":
    layer = jax.checkpoint(layer, policy=policy, prevent_cse=not cfg.scan_layers)
  if cfg.scan_layers:
    x_BxLxD, _ = jax.lax.scan(layer, x_BxLxD, body["blocks"])
  else:
    for i in range(cfg.n_layers):
      x_BxLxD, _ = layer(x_BxLxD, jax.tree.map(lambda w: w[i], body["blocks"]))
  return rms_norm(x_BxLxD, body["final_norm"], cfg.norm_eps)


def embed_tokens(embed, tokens_BxL, cfg):
  return jnp.take(embed["table"], tokens_BxL, axis=0).astype(compute_dtype(cfg))


def output_logits(embed, h_BxLxD, vocab_size, cfg):
  """float32 logits over the (padded) table; rows at or past `vocab_size` never enter the softmax."""
  head = embed["table"] if cfg.tie_embeddings else embed["head"]
  logits_BxLxV = jnp.einsum("bld,vd->blv", h_BxLxD, head.astype(h_BxLxD.dtype),
                            preferred_element_type=jnp.float32)
  valid_V = jnp.arange(head.shape[0]) < vocab_size
  return jnp.where(valid_V, logits_BxLxV, -1e30)


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
