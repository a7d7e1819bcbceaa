"""The DEPT round on a real 8-device mesh: outer-step rules per variant, optimizers, no
cross-source traffic in local steps, exact bytes in outer steps."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dept_jax import config_lib, dept, experiment, hlo_comm, model, optim


def tiny_config(variant="spec", **overrides):
  c = config_lib.base_config()
  c.variant = variant
  c.steps, c.local_steps, c.batch_size, c.seq_len = 20, 5, 4, 16
  c.model.update(d_model=32, n_layers=2, n_heads=4, d_ff=64)
  c.data.update(num_sources=4, vocab_size=64, source_vocab_size=48)
  c.update_from_flattened_dict(overrides)
  return c


_EXPERIMENTS = {}


def setup(variant="spec", **overrides):
  """Experiments (and so their compiled steps) are shared by the tests that ask for the same one;
  each test makes its own fresh state (a step's batch depends only on the step)."""
  key = (variant, tuple(sorted(overrides.items())))
  if key not in _EXPERIMENTS:
    _EXPERIMENTS[key] = experiment.setup(tiny_config(variant, **overrides), None)
  return _EXPERIMENTS[key]


def host(tree):
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def run_local(exp, state, n):
  idx = exp.slot_sources(0)
  state = exp.program.begin_round(state, idx)
  for t in range(n):
    state, _ = exp.program.local_step(state, exp.batch(t))
  return state, idx


def test_fedavg_body_is_mean_and_identical_on_every_slice():
  exp = setup("spec")
  assert exp.mesh.shape["source"] == 4 and exp.mesh.shape["data"] == 2
  state, idx = run_local(exp, exp.program.init(jax.random.key(0)), 3)
  local_bodies = host(state["slots"]["params"]["body"])
  # Local training made the slots differ.
  assert not np.allclose(local_bodies["final_norm"][0], local_bodies["final_norm"][1])
  state, _ = exp.program.outer_step(state, idx, exp.outer_weights(idx))
  for got, local in zip(jax.tree.leaves(state["global"]["body"]), jax.tree.leaves(local_bodies)):
    np.testing.assert_allclose(np.asarray(got), local.mean(0), rtol=1e-6, atol=1e-7)
    shards = [np.asarray(s.data) for s in got.addressable_shards]
    assert len(shards) == 8
    for s in shards[1:]:
      np.testing.assert_array_equal(s, shards[0])
  state = exp.program.begin_round(state, idx)
  slots = host(state["slots"]["params"]["body"])
  for leaf, g in zip(jax.tree.leaves(slots), jax.tree.leaves(host(state["global"]["body"]))):
    for i in range(4):
      np.testing.assert_array_equal(leaf[i], g)


def test_nesterov_matches_hand_computed_update():
  exp = setup("spec", **{"outer.optimizer": "nesterov", "outer.lr": 0.7, "outer.momentum": 0.9})
  state = exp.program.init(jax.random.key(0))
  theta = host(state["global"]["body"])["final_norm"]
  trace = np.zeros_like(theta)
  for _ in range(2):  # two rounds: the second uses the momentum from the first
    state, idx = run_local(exp, state, 2)
    locals_ = host(state["slots"]["params"]["body"])["final_norm"]
    delta = theta - locals_.mean(0)
    trace = delta + 0.9 * trace
    theta = theta - 0.7 * (delta + 0.9 * trace)
    state, _ = exp.program.outer_step(state, idx, exp.outer_weights(idx))
    np.testing.assert_allclose(host(state["global"]["body"])["final_norm"], theta, rtol=1e-5,
                               atol=1e-6)


def test_spec_tables_never_averaged():
  exp = setup("spec")
  state, idx = run_local(exp, exp.program.init(jax.random.key(1)), 3)
  before = host(state["slots"]["params"]["embed"]["table"])
  state, _ = exp.program.outer_step(state, idx, exp.outer_weights(idx))
  state = exp.program.begin_round(state, idx)
  after = host(state["slots"]["params"]["embed"]["table"])
  np.testing.assert_array_equal(after, before)
  assert not np.allclose(after[0], after[1])
  assert "embed" not in state["global"]


def test_trim_rows_follow_their_owners_and_glob_is_the_mean():
  exp = setup("trim")
  state0 = exp.program.init(jax.random.key(2))
  global_before = host(state0["global"]["embed"]["table"])
  state, idx = run_local(exp, state0, 3)
  local = host(state["slots"]["params"]["embed"]["table"])
  state, _ = exp.program.outer_step(state, idx, exp.outer_weights(idx))
  after = host(state["global"]["embed"]["table"])
  l2g = exp.vocab.local_to_global
  owners = {}
  for k in range(4):
    for local_id, g in enumerate(l2g[k, :exp.vocab.sizes[k]]):
      owners.setdefault(int(g), []).append(local[k, local_id])
  counts = {len(v) for v in owners.values()}
  assert 1 in counts and max(counts) > 1, "the synthetic sources must overlap partially"
  unowned = sorted(set(range(after.shape[0])) - set(owners))  # padding rows past 64 included
  assert set(unowned) - set(range(64, after.shape[0])), "some global ids must belong to no source"
  for g, rows in owners.items():
    np.testing.assert_allclose(after[g], np.mean(rows, axis=0), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(after[unowned], global_before[unowned])

  exp = setup("glob")
  state0 = exp.program.init(jax.random.key(2))
  padding_before = host(state0["global"]["embed"]["table"])[64:]
  state, idx = run_local(exp, state0, 3)
  local = host(state["slots"]["params"]["embed"]["table"])
  state, _ = exp.program.outer_step(state, idx, exp.outer_weights(idx))
  after = host(state["global"]["embed"]["table"])
  np.testing.assert_allclose(after[:64], local.mean(0)[:64], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(after[64:], padding_before)  # rows past the vocabulary: no owner


def test_token_weighted_mean():
  exp = setup("spec", **{"outer.weighting": "tokens"})
  state, idx = run_local(exp, exp.program.init(jax.random.key(0)), 2)
  w = exp.outer_weights(idx)
  assert len(set(w.tolist())) > 1  # the synthetic sources differ in size
  local = host(state["slots"]["params"]["body"])["final_norm"]
  state, _ = exp.program.outer_step(state, idx, w)
  np.testing.assert_allclose(host(state["global"]["body"])["final_norm"],
                             (w[:, None] * local).sum(0) / w.sum(), rtol=1e-5)


def test_one_source_fedavg_equals_plain_training():
  """With one source and FedAvg, rounds are invisible: DEPT is ordinary AdamW training."""
  c = tiny_config("spec", **{"data.num_sources": 1, "steps": 12, "local_steps": 4,
                             "batch_size": 8})
  exp = experiment.setup(c, None)
  state = exp.program.init(jax.random.key(3))
  params = host({"body": jax.tree.map(lambda x: x[0], state["slots"]["params"]["body"]),
                 "embed": jax.tree.map(lambda x: x[0], state["slots"]["params"]["embed"])})
  tx = optax.chain(optax.clip_by_global_norm(c.optim.grad_clip),
                   optax.adamw(optim.lr_schedule(c.optim, c.steps), b1=c.optim.b1,
                               b2=c.optim.b2, eps=c.optim.eps, weight_decay=0.0))
  opt = tx.init(params)
  vocab = exp.vocab.sizes[0]

  @jax.jit
  def plain_step(params, opt, batch):
    (loss, _), g = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch, vocab, c.model)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss

  windows = exp.data.sources[0].windows
  for step in range(c.steps):
    idx = exp.slot_sources(step // c.local_steps)
    if step % c.local_steps == 0:
      state = exp.program.begin_round(state, idx)
    state, m = exp.program.local_step(state, exp.batch(step))
    rows = np.stack([windows[step * c.batch_size + j] for j in range(c.batch_size)])
    params, opt, loss = plain_step(params, opt, {"inputs": np.maximum(rows[:, :-1], 0),
                                                 "targets": rows[:, 1:]})
    np.testing.assert_allclose(float(m["loss"][0]), float(loss), rtol=2e-5)
    if (step + 1) % c.local_steps == 0:
      state, _ = exp.program.outer_step(state, idx, exp.outer_weights(idx))
  np.testing.assert_allclose(host(state["global"]["body"])["final_norm"],
                             np.asarray(params["body"]["final_norm"]), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("variant", ["std", "glob", "trim", "spec", "spec_opt"])
def test_local_step_has_no_collective_across_source(variant):
  exp = setup(variant)
  prog = exp.program
  batch = experiment.abstract_batch(exp.config, prog)
  # What the code asks for: no collective names `source` in the traced local step (it runs under
  # shard_map over `source`, so one could only appear by writing it) ...
  traced = jax.make_jaxpr(prog.local_step)(prog.abstract_state, batch)
  assert hlo_comm.jaxpr_collectives(traced, "source") == []
  # ... and what XLA runs: data-parallel gradients reduce inside a slice, never across.
  text = prog.local_step.lower(prog.abstract_state, batch).compile().as_text()
  found = hlo_comm.collectives(text, 8, 8 // exp.mesh.shape["source"])
  if variant != "std":
    assert any(not c["crosses_source"] for c in found), "data-parallel grads reduce in a slice"
  assert [c for c in found if c["crosses_source"]] == []


def test_the_collective_check_sees_the_outer_psum():
  """The check above can fail: the outer step's psum over `source` is found by both readers."""
  exp = setup("spec")
  prog = exp.program
  vec = lambda dt: jax.ShapeDtypeStruct((prog.slots,), dt)
  traced = jax.make_jaxpr(prog.outer_step)(prog.abstract_state, vec(jnp.int32), vec(jnp.float32))
  assert set(hlo_comm.jaxpr_collectives(traced, "source")) == {"psum_invariant"}
  assert hlo_comm.jaxpr_collectives(
      jax.make_jaxpr(prog.begin_round)(prog.abstract_state, vec(jnp.int32)), "source") == []


def body_bytes(cfg):
  return 4 * model.count_params(jax.eval_shape(lambda: model.init_body(cfg, jax.random.key(0))))


def round_bytes(prog, mesh):
  """Bytes across `source` in a round: begin_round plus outer_step, from compiled HLO."""
  vec = lambda dt: jax.ShapeDtypeStruct((prog.slots,), dt)
  begin = prog.begin_round.lower(prog.abstract_state, vec(jnp.int32)).compile()
  outer = prog.outer_step.lower(prog.abstract_state, vec(jnp.int32), vec(jnp.float32)).compile()
  return [hlo_comm.cross_source_bytes(f.as_text(), mesh) for f in (begin, outer)]


@pytest.mark.parametrize("variant, per_round", [
    ("spec", 0), ("spec_opt", 0), ("glob", 0), ("spec", 2), ("trim", 2)])
def test_a_round_moves_exactly_what_the_variant_shares(variant, per_round):
  """Every byte across `source` in a round is the body (plus the global table for shared tables):
  with fewer slots than sources, banks of tables and AdamW moments stay on their slices."""
  exp = setup(variant, **({"outer.sources_per_round": per_round} if per_round else {}))
  c = exp.config
  prog = exp.program
  assert prog.uses_bank == bool(per_round)
  expected = body_bytes(c.model)
  if variant in ("glob", "trim"):  # the global table, its padding rows included
    expected += 4 * prog.layout.global_rows * c.model.d_model
    assert prog.layout.global_rows == 128  # 64 ids padded to model.vocab_multiple
  assert round_bytes(prog, exp.mesh) == [0, expected]
  assert dept.outer_payload_bytes(prog) == expected


def test_fedavg_assigns_the_weighted_mean_exactly():
  """Two sources, equal weights: the new global body is (a + b) / 2 bit for bit (the pseudo-
  gradient form g - (g - mean) is not), and token weights give psum(w x) / sum(w)."""
  exp = setup("spec", **{"data.num_sources": 2})
  assert exp.mesh.shape["source"] == 2
  state, idx = run_local(exp, exp.program.init(jax.random.key(0)), 2)
  local = host(state["slots"]["params"]["body"])
  state, _ = exp.program.outer_step(state, idx, np.ones(2, np.float32))
  for got, x in zip(jax.tree.leaves(host(state["global"]["body"])), jax.tree.leaves(local)):
    np.testing.assert_array_equal(got, (x[0] + x[1]) / np.float32(2))
  state, idx = run_local(exp, state, 2)
  local = host(state["slots"]["params"]["body"])["final_norm"]
  w = np.asarray([3.0, 1.0], np.float32)
  state, _ = exp.program.outer_step(state, idx, w)
  np.testing.assert_array_equal(host(state["global"]["body"])["final_norm"],
                                (w[0] * local[0] + w[1] * local[1]) / w.sum())


def test_round_sources_keep_each_source_on_its_own_slice():
  """With fewer slots than sources, slice j trains only sources j*K/n .. (j+1)*K/n - 1 (where its
  bank lives); over many rounds every source takes part equally often."""
  K, S, n = 8, 4, 2
  rounds = np.stack([dept.round_sources(r, 0, K, S, n) for r in range(400)])
  slot_slice = np.arange(S) // (S // n)
  assert (rounds // (K // n) == slot_slice).all()
  assert all(len(set(r)) == S for r in rounds.tolist())
  counts = np.bincount(rounds.ravel(), minlength=K) / len(rounds)
  np.testing.assert_allclose(counts, S / K, atol=0.06)
  np.testing.assert_array_equal(rounds[3], dept.round_sources(3, 0, K, S, n))
  assert not (rounds[3] == dept.round_sources(3, 1, K, S, n)).all() or not (
      rounds[4] == dept.round_sources(4, 1, K, S, n)).all()
  np.testing.assert_array_equal(dept.round_sources(5, 0, K, K, n), np.arange(K))


def test_sources_sitting_out_keep_their_tables():
  exp = setup("spec", **{"outer.sources_per_round": 2})
  assert exp.program.uses_bank and exp.mesh.shape["source"] == 2
  state = exp.program.init(jax.random.key(4))
  bank_before = host(state["bank"]["embed"]["table"])
  idx = exp.slot_sources(0)
  out = sorted(set(range(4)) - set(idx.tolist()))
  state = exp.program.begin_round(state, idx)
  for t in range(2):
    state, _ = exp.program.local_step(state, exp.batch(t))
  state, _ = exp.program.outer_step(state, idx, exp.outer_weights(idx))
  bank_after = host(state["bank"]["embed"]["table"])
  np.testing.assert_array_equal(bank_after[out], bank_before[out])
  for i in idx:
    assert not np.allclose(bank_after[i], bank_before[i])
  # Another round draws another subset, deterministic from the seed.
  rounds = [tuple(exp.slot_sources(r)) for r in range(6)]
  assert len(set(rounds)) > 1 and rounds == [tuple(exp.slot_sources(r)) for r in range(6)]


def test_reset_inner_state_restarts_adam_moments():
  for reset in (False, True):
    exp = setup("spec", **{"outer.reset_inner_state": reset})
    state, idx = run_local(exp, exp.program.init(jax.random.key(0)), 2)
    state, _ = exp.program.outer_step(state, idx, exp.outer_weights(idx))
    state = exp.program.begin_round(state, idx)
    mu = host(state["slots"]["opt"])[1].mu["body"]["final_norm"]
    assert (np.abs(mu).max() == 0) == reset


def test_padding_rows_never_enter_the_softmax():
  cfg = tiny_config().model
  body = model.init_body(cfg, jax.random.key(0))
  embed = model.init_embed(cfg, 16, jax.random.key(1))
  tokens = jnp.array([[1, 2, 3]])
  logits = model.forward(body, embed, tokens, 10, cfg)
  probs = jax.nn.softmax(logits, axis=-1)
  assert float(probs[..., 10:].max()) == 0.0
  np.testing.assert_allclose(np.asarray(probs[..., :10].sum(-1)), 1.0, rtol=1e-5)


def test_std_mixture_follows_temperature():
  from dept_jax.data import temperature_probs
  p = temperature_probs([100, 400], 0.5)
  np.testing.assert_allclose(p, [1 / 3, 2 / 3])
  np.testing.assert_allclose(temperature_probs([100, 400], 0.0), [0.5, 0.5])
  exp = setup("std", **{"data.temperature": 1.0})
  ids = np.concatenate([exp.host_batch(t)["source_ids"][0] for t in range(20)])
  freq = np.bincount(ids, minlength=4) / len(ids)
  expected = temperature_probs([s.train_tokens for s in exp.data.sources], 1.0)
  np.testing.assert_allclose(freq, expected, atol=0.04)


def test_vocabulary_padded_to_the_tensor_axis():
  """A 255-row global table cannot shard over tensor=2: it is padded, and the padding stays out
  of the softmax and out of the outer step."""
  exp = setup("glob", **{"data.vocab_size": 255, "mesh.tensor": 2, "batch_size": 8,
                         "model.n_heads": 4, "model.d_ff": 64})
  assert exp.mesh.shape["tensor"] == 2
  state, idx = run_local(exp, exp.program.init(jax.random.key(0)), 2)
  assert state["global"]["embed"]["table"].shape[0] == 256
  before = host(state["global"]["embed"]["table"])[255]
  state, _ = exp.program.outer_step(state, idx, exp.outer_weights(idx))
  np.testing.assert_array_equal(host(state["global"]["embed"]["table"])[255], before)


def test_trim_with_fewer_slices_banks_each_sources_moments():
  exp = setup("trim", **{"outer.sources_per_round": 2})
  state = exp.program.init(jax.random.key(5))
  assert set(state["bank"]) == {"opt"}  # the shared table lives in `global`, moments per source
  idx = exp.slot_sources(0)
  out = sorted(set(range(4)) - set(idx.tolist()))
  state = exp.program.begin_round(state, idx)
  for t in range(2):
    state, _ = exp.program.local_step(state, exp.batch(t))
  slot_mu = host(state["slots"]["opt"])[1].mu["embed"]["table"]
  state, _ = exp.program.outer_step(state, idx, exp.outer_weights(idx))
  bank_mu = host(state["bank"]["opt"])[1].mu["embed"]["table"]
  np.testing.assert_array_equal(bank_mu[idx], slot_mu)
  assert np.abs(bank_mu[out]).max() == 0  # sources that sat out keep their (fresh) moments
