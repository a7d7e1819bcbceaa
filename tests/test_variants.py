"""The variant table: what each variant's entry says, and that a new variant is one entry."""
import jax
import numpy as np
import pytest

from dept_jax import config_lib, dept, variants
from dept_jax.mesh import make_mesh


def test_each_variant_says_its_rules():
  got = {name: (v.vocabulary, v.mixture, v.table.name, v.eval_model, v.export)
         for name, v in variants.VARIANTS.items()}
  assert got == {
      "std": ("global", True, "private", "mixture", "global"),
      "glob": ("global", False, "shared_rows", "source", "global"),
      "trim": ("trimmed", False, "shared_rows", "source", "owned"),
      "spec": ("trimmed", False, "private", "source", "owned"),
      "spec_opt": ("own", False, "private", "source", "own"),
  }
  assert variants.get("trim") is variants.VARIANTS["trim"]
  assert [v for v in variants.VARIANTS if variants.get(v).trimmed] == ["trim", "spec"]


def _batch(rng, S, B, L, V):
  tokens = rng.integers(0, V, (S, B, L + 1))
  return dept.make_batch(tokens, np.repeat(np.arange(S)[:, None], B, 1), [V] * S)


@pytest.fixture
def spec_global(monkeypatch):
  """A variant the paper did not run: private tables over the untrimmed global vocabulary.
  Registering it is the whole change."""
  entry = variants.Variant("spec_global", vocabulary="global", table=variants.PRIVATE,
                           export="global")
  monkeypatch.setitem(variants.VARIANTS, "spec_global", entry)
  return entry


def test_a_new_variant_is_one_table_entry(spec_global):
  c = config_lib.base_config()
  c.variant = "spec_global"
  c.steps, c.local_steps, c.batch_size, c.seq_len = 4, 2, 4, 8
  c.model.update(d_model=16, n_layers=1, n_heads=2, d_ff=32)
  c.data.num_sources = 2
  shape = config_lib.validate(c, 8)
  assert shape == {"source": 2, "data": 4, "fsdp": 1, "tensor": 1}
  mesh = make_mesh(shape)
  V = 24
  prog = dept.build(c, mesh, dept.Vocab((V, V), None, V))
  state = prog.init(jax.random.key(0))
  assert "embed" not in state["global"]  # private tables: nothing global to send
  idx = np.arange(2, dtype=np.int32)
  state = prog.begin_round(state, idx)
  rng = np.random.default_rng(0)
  for _ in range(2):
    state, m = prog.local_step(state, _batch(rng, 2, 4, 8, V))
  tables = np.asarray(state["slots"]["params"]["embed"]["table"])
  bodies = jax.device_get(state["slots"]["params"]["body"])
  state, _ = prog.outer_step(state, idx, np.ones(2, np.float32))
  np.testing.assert_allclose(np.asarray(state["global"]["body"]["final_norm"]),
                             bodies["final_norm"].mean(0), rtol=1e-6)
  state = prog.begin_round(state, idx)
  np.testing.assert_array_equal(np.asarray(state["slots"]["params"]["embed"]["table"]), tables)
  body, embed = dept.source_params(state, "spec_global", dept.Vocab((V, V), None, V), 1, None)
  np.testing.assert_array_equal(np.asarray(embed["table"]), tables[1])


@pytest.mark.parametrize("vocab, multiple, tensor, rows", [
    (50257, 128, 1, 50304), (192, 128, 1, 256), (256, 128, 1, 256), (50257, 1, 1, 50257),
    (50257, 1, 2, 50258), (100, 48, 32, 192)])
def test_table_rows_pad_the_vocabulary_to_the_hardware_multiple(vocab, multiple, tensor, rows):
  from dept_jax import layout
  mesh = jax.sharding.AbstractMesh((1, 1, 1, tensor), config_lib.MESH_AXES)
  assert layout.table_rows(vocab, mesh, {"vocab_multiple": multiple}) == rows


def test_padding_rows_change_no_loss():
  """The same parameters over 200 ids give the same loss whether the table has 200 or 256 rows:
  the rows past the vocabulary are outside the softmax."""
  from dept_jax import model
  c = config_lib.base_config()
  cfg = model.static_config(dict(c.model, d_model=16, n_layers=1, n_heads=2, d_ff=32))
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 200, (2, 9))
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
  params = {"body": model.init_body(cfg, jax.random.key(0)),
            "embed": model.init_embed(cfg, 256, jax.random.key(1))}
  small = dict(params, embed=jax.tree.map(lambda t: t[:200], params["embed"]))
  big, _ = model.loss_fn(params, batch, 200, cfg)
  exact, _ = model.loss_fn(small, batch, 200, cfg)
  np.testing.assert_allclose(float(big), float(exact), rtol=1e-6)
