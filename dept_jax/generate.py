"""Sampling from one source's model (shared body + that source's embedding).

    generate(body, embed, vocab_size, cfg, prompt_ids, max_new_tokens=..., temperature=...,
             top_k=..., top_p=..., seed=..., eos_id=..., use_cache=True) -> new token ids

With `use_cache` the prompt is run once (prefill) into a per-layer KV cache and every new token is
one jitted step that appends its keys/values at its position (`model.Block`'s cache path); the whole
decode loop is a `lax.while_loop` inside one jitted function, so it stops on device at EOS or after
`max_new_tokens`. Without the cache every step re-runs `model.forward` over the whole (padded)
sequence: slow, but the reference the cache is tested against.

Shapes are bucketed (prompt to a multiple of 16, total length to a multiple of 64) so prompts of
nearby lengths share one compilation. Positions past the real tokens hold padding that the causal
mask never lets a real query see.

Sampling: logits of padding rows (id >= vocab_size) are -inf before anything else, so they are
never chosen. temperature 0 = greedy (argmax). Otherwise logits / temperature, then top-k (k > 0
keeps the k most likely; ties broken by lower id, as argmax does), then top-p (keeps the smallest
set of most likely tokens whose probability reaches p; the most likely token is always kept), then
one categorical draw. The key for new token i is fold_in(PRNGKey(seed), i): a fixed seed gives the
same tokens, cached or not.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp

from dept_jax import model
from dept_jax.config_lib import ConfigError

PROMPT_BUCKET = 16
TOTAL_BUCKET = 64


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


# ----------------------------------------------------------------------------- sampling


def sample_logits(logits_V, key, *, vocab_size: int, temperature=1.0, top_k=0, top_p=1.0,
                  greedy: bool = False):
  """One token id from float logits [V] (V may include padding rows past `vocab_size`).

  temperature, top_k, top_p may be traced; `greedy` (static) takes the argmax.
  """
  V = logits_V.shape[-1]
  rank_V = jnp.arange(V)
  logits_V = jnp.where(rank_V < vocab_size, logits_V.astype(jnp.float32), -jnp.inf)
  if greedy:
    return jnp.argmax(logits_V).astype(jnp.int32)
  scaled_V = logits_V / jnp.asarray(temperature, jnp.float32)
  order_V = jnp.argsort(-scaled_V, stable=True)  # most likely first; equal logits: lower id first
  sorted_V = scaled_V[order_V]
  k = jnp.where(jnp.asarray(top_k) > 0, top_k, V)
  keep_V = (rank_V < k) & (sorted_V > -jnp.inf)
  probs_V = jax.nn.softmax(jnp.where(keep_V, sorted_V, -jnp.inf))
  mass_before_V = jnp.cumsum(probs_V) - probs_V
  keep_V = keep_V & ((mass_before_V < top_p) | (rank_V == 0))
  idx = jax.random.categorical(key, jnp.where(keep_V, sorted_V, -jnp.inf))
  return order_V[idx].astype(jnp.int32)


# ----------------------------------------------------------------------------- decoding


def init_kv_cache(cfg, batch: int, max_len: int):
  """Stacked per-layer caches {'k','v'}: [n_layers, batch, max_len, n_kv_heads, head_dim]."""
  shape = (cfg.n_layers, batch, max_len, model.n_kv_heads(cfg), model.head_dim(cfg))
  dt = model.compute_dtype(cfg)
  return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}


def forward_with_cache(body, embed, tokens_BxL, offset, cache, cfg):
  """Run tokens at positions offset.. through the body, writing their keys/values into `cache`.
  Returns (final-normed hidden states [B, L, D], new cache)."""
  return model.body_with_cache(body, model.embed_tokens(embed, tokens_BxL, cfg), offset, cache, cfg)


def _logits_at(embed, h_BxLxD, pos, vocab_size, cfg):
  h = jax.lax.dynamic_index_in_dim(h_BxLxD, pos, axis=1, keepdims=True)
  return model.output_logits(embed, h, vocab_size, cfg)[0, 0]


def _decode_loop(first_logits, step_fn, carry, key, n_prompt, max_new, eos_id, sample, out_len):
  """Shared loop: token i is drawn with fold_in(key, i); stops after EOS or max_new tokens."""
  tok0 = sample(first_logits, jax.random.fold_in(key, 0))
  out = jnp.full((out_len,), -1, jnp.int32).at[0].set(tok0)

  def cond(state):
    i, _, _, _, done = state
    return (i < max_new) & ~done

  def body_fn(state):
    i, tok, carry, out, _ = state
    logits, carry = step_fn(carry, tok, n_prompt + i - 1)  # tok sits at position P + i - 1
    nxt = sample(logits, jax.random.fold_in(key, i))
    return i + 1, nxt, carry, out.at[i].set(nxt), nxt == eos_id

  n, _, _, out, _ = jax.lax.while_loop(cond, body_fn,
                                        (jnp.int32(1), tok0, carry, out, tok0 == eos_id))
  return out, n


@functools.partial(jax.jit, static_argnames=("cfg", "vocab_size", "max_len", "greedy", "use_cache"))
def _generate(body, embed, prompt_Lp, n_prompt, max_new, key, temperature, top_k, top_p, eos_id, *,
              cfg, vocab_size, max_len, greedy, use_cache):
  """One compilation per (config, vocab, prompt bucket, total-length bucket, greedy, cache)."""
  sample = functools.partial(sample_logits, vocab_size=vocab_size, temperature=temperature,
                             top_k=top_k, top_p=top_p, greedy=greedy)
  if use_cache:
    cache = init_kv_cache(cfg, 1, max_len)
    h, cache = forward_with_cache(body, embed, prompt_Lp[None], 0, cache, cfg)
    first = _logits_at(embed, h, n_prompt - 1, vocab_size, cfg)

    def step(cache, tok, pos):
      h, cache = forward_with_cache(body, embed, tok.reshape(1, 1), pos, cache, cfg)
      return model.output_logits(embed, h, vocab_size, cfg)[0, 0], cache

    return _decode_loop(first, step, cache, key, n_prompt, max_new, eos_id, sample, max_len)

  buf = jnp.zeros((max_len,), jnp.int32).at[:prompt_Lp.shape[0]].set(prompt_Lp)
  buf = jnp.where(jnp.arange(max_len) < n_prompt, buf, 0)
  first = model.forward(body, embed, buf[None], vocab_size, cfg)[0, n_prompt - 1]

  def step(buf, tok, pos):
    buf = buf.at[pos].set(tok)
    return model.forward(body, embed, buf[None], vocab_size, cfg)[0, pos], buf

  return _decode_loop(first, step, buf, key, n_prompt, max_new, eos_id, sample, max_len)


def check_sampling(max_new_tokens, temperature, top_k, top_p):
  """Sampling settings that cannot work fail here, in one line naming the flag (the command line
  calls this before it loads anything)."""
  def bad(flag, rule, got, fix):
    raise ConfigError(f"{flag} must be {rule}, got {got}. Fix: pass --{flag} {fix}.")
  if not max_new_tokens >= 0:
    bad("max_new_tokens", ">= 0", max_new_tokens, "0 or more")
  if not (math.isfinite(temperature) and temperature >= 0):
    bad("temperature", ">= 0 (0 = greedy)", temperature, "0 (greedy) or a positive number")
  if not top_k >= 0:
    bad("top_k", ">= 0 (0 = off)", top_k, "0 (off) or a positive count")
  if not 0.0 < top_p <= 1.0:
    bad("top_p", "in (0, 1] (1 = off)", top_p, "a value in (0, 1]")


def generate(body, embed, vocab_size: int, cfg, prompt_ids: Sequence[int], *,
             max_new_tokens: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             seed: int = 0, eos_id: int | None = None, use_cache: bool = True) -> list[int]:
  """Sample up to `max_new_tokens` tokens after `prompt_ids` (one sequence, ids < vocab_size).

  Returns only the new tokens; the EOS token, when drawn, is the last one returned.
  temperature 0 is greedy; top_k 0 and top_p 1 switch those filters off.
  """
  prompt = [int(t) for t in prompt_ids]
  if not prompt:
    raise ValueError("prompt_ids is empty: give at least one token (e.g. BOS)")
  if min(prompt) < 0 or max(prompt) >= vocab_size:
    raise ValueError(f"prompt ids must lie in [0, {vocab_size}); got {min(prompt)}..{max(prompt)}")
  check_sampling(max_new_tokens, temperature, top_k, top_p)
  if max_new_tokens == 0:
    return []
  P = len(prompt)
  padded = _round_up(P, PROMPT_BUCKET)
  max_len = max(_round_up(P + max_new_tokens, TOTAL_BUCKET), padded)
  prompt_arr = jnp.asarray(prompt + [0] * (padded - P), jnp.int32)
  out, n = _generate(
      body, embed, prompt_arr, jnp.int32(P), jnp.int32(max_new_tokens), jax.random.PRNGKey(seed),
      jnp.float32(max(temperature, 1e-6)), jnp.int32(top_k), jnp.float32(top_p),
      jnp.int32(-1 if eos_id is None else eos_id),
      cfg=model.static_config(cfg), vocab_size=int(vocab_size), max_len=max_len,
      greedy=temperature == 0, use_cache=bool(use_cache))
  return [int(t) for t in jax.device_get(out)[:int(n)]]
