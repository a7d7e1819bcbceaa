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
