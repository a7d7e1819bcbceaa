"""Sampling: reproducible seeds, KV cache == no cache, top-k / top-p sets, EOS, padding rows."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dept_jax import config_lib, generate as gen, model

VOCAB, PAD_ROWS = 96, 8


def _cfg(kv=2, tie=True):
  cfg = config_lib.base_config().model
  cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_ff = 32, 2, 4, kv, 64
  cfg.tie_embeddings = tie
  cfg.init_std = 0.3  # peaky logits: no near-ties for greedy to trip over
  return cfg


@pytest.fixture(scope="module")
def setup():
  cfg = _cfg()
  kb, ke, kp = jax.random.split(jax.random.PRNGKey(0), 3)
  body = model.init_body(cfg, kb)
  embed = model.init_embed(cfg, VOCAB + PAD_ROWS, ke)
  # Padding rows that would win every draw if they were not masked out.
  embed["table"] = embed["table"].at[VOCAB:].set(
      50.0 * jax.random.normal(kp, (PAD_ROWS, cfg.d_model)))
  return body, embed, cfg


PROMPT = [5, 17, 3, 42, 8]


def _gen(setup, **kw):
  body, embed, cfg = setup
  kw.setdefault("max_new_tokens", 20)
  return gen.generate(body, embed, VOCAB, cfg, PROMPT, **kw)


def _reference_greedy(body, embed, cfg, prompt, n):
  """Greedy decoding the slow obvious way: the whole sequence through model.forward each step
  (a fixed-length buffer, so one compilation; causal attention ignores what follows)."""
  fwd = jax.jit(lambda b, e, t: model.forward(b, e, t, VOCAB, cfg))
  seq = np.zeros((1, len(prompt) + n), np.int32)
  seq[0, :len(prompt)] = prompt
  for pos in range(len(prompt), len(prompt) + n):
    seq[0, pos] = int(jnp.argmax(fwd(body, embed, jnp.asarray(seq))[0, pos - 1]))
  return seq[0, len(prompt):].tolist()


def test_greedy_cache_matches_no_cache_and_forward(setup):
  body, embed, cfg = setup
  cached = _gen(setup, temperature=0.0, max_new_tokens=24)
  uncached = _gen(setup, temperature=0.0, max_new_tokens=24, use_cache=False)
  assert len(cached) == 24
  assert cached == uncached
  assert cached == _reference_greedy(body, embed, cfg, PROMPT, 24)
  assert len(set(cached)) > 1  # not a degenerate constant output


def test_greedy_matches_with_mha_and_untied():
  cfg = _cfg(kv=0, tie=False)
  kb, ke = jax.random.split(jax.random.PRNGKey(3))
  body, embed = model.init_body(cfg, kb), model.init_embed(cfg, VOCAB, ke)
  prompt = list(range(1, 20))  # longer than one prompt bucket
  cached = gen.generate(body, embed, VOCAB, cfg, prompt, max_new_tokens=12, temperature=0.0)
  assert cached == _reference_greedy(body, embed, cfg, prompt, 12)


def test_seed_reproducible_and_cache_agnostic(setup):
  kw = dict(temperature=1.0, top_k=40, top_p=0.95, max_new_tokens=32)
  a = _gen(setup, seed=7, **kw)
  assert a == _gen(setup, seed=7, **kw)
  assert a == _gen(setup, seed=7, use_cache=False, **kw)
  others = [_gen(setup, seed=s, **kw) for s in (8, 9)]
  assert any(o != a for o in others)
  assert all(0 <= t < VOCAB for t in a + others[0] + others[1])


def test_top_k_1_is_greedy(setup):
  greedy = _gen(setup, temperature=0.0)
  assert _gen(setup, temperature=1.5, top_k=1, seed=3) == greedy
  assert _gen(setup, temperature=1.5, top_p=1e-6, seed=4) == greedy  # top-p keeps the argmax


def test_padding_rows_never_sampled(setup):
  body, embed, cfg = setup
  # Unmasked, the padding rows dominate the logits: the test would catch any leak.
  raw = model.forward(body, embed, jnp.asarray([PROMPT]), VOCAB + PAD_ROWS, cfg)[0, -1]
  assert int(jnp.argmax(raw)) >= VOCAB
  toks = _gen(setup, temperature=3.0, max_new_tokens=50, seed=1)
  assert len(toks) == 50 and max(toks) < VOCAB


def test_eos_stops(setup):
  greedy = _gen(setup, temperature=0.0)
  eos = greedy[3]
  first = greedy.index(eos)
  out = _gen(setup, temperature=0.0, eos_id=eos)
  assert out == greedy[:first + 1] and out[-1] == eos
  assert _gen(setup, temperature=0.0, max_new_tokens=0) == []


def test_sample_logits_filters():
  logits = jnp.log(jnp.array([0.05, 0.4, 0.3, 0.2, 0.05, 9.0, 9.0]))  # last 2 = padding rows
  keys = jax.random.split(jax.random.PRNGKey(0), 1000)

  f = jax.jit(jax.vmap(lambda k, tk, tp: gen.sample_logits(logits, k, vocab_size=5, top_k=tk,
                                                           top_p=tp), in_axes=(0, None, None)))

  def draw(top_k=0, top_p=1.0):
    return np.asarray(f(keys, top_k, top_p))

  assert set(draw(top_k=2).tolist()) == {1, 2}
  assert set(draw(top_p=0.65).tolist()) == {1, 2}  # 0.4 < 0.65, 0.4 + 0.3 reaches it
  assert set(draw(top_p=0.75).tolist()) == {1, 2, 3}
  assert set(draw(top_k=3, top_p=1.0).tolist()) == {1, 2, 3}
  full = draw()
  assert set(full.tolist()) == {0, 1, 2, 3, 4}
  freq = np.bincount(full, minlength=5) / len(full)
  np.testing.assert_allclose(freq, [0.05, 0.4, 0.3, 0.2, 0.05], atol=0.05)
  assert int(gen.sample_logits(logits, keys[0], vocab_size=5, greedy=True)) == 1
  # Equal logits: top-k=1 picks the lower id, as argmax does.
  tie = jnp.array([0.0, 2.0, 2.0, 1.0])
  assert int(gen.sample_logits(tie, keys[0], vocab_size=4, top_k=1)) == 1


def test_argument_errors(setup):
  body, embed, cfg = setup
  with pytest.raises(ValueError, match="prompt_ids is empty"):
    gen.generate(body, embed, VOCAB, cfg, [], max_new_tokens=3)
  with pytest.raises(ValueError, match=r"prompt ids must lie in \[0, 96\)"):
    gen.generate(body, embed, VOCAB, cfg, [1, VOCAB], max_new_tokens=3)
  with pytest.raises(ValueError, match="top_p must be in"):
    gen.generate(body, embed, VOCAB, cfg, [1], max_new_tokens=3, top_p=0.0)
