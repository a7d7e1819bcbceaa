"""The synthetic sources: one task for every variant, and a chain that stays the same task when
other chains are left out (a study's held-out source)."""
import numpy as np

from dept_jax import config_lib
from dept_jax.data import synthetic


def config(variant, **data):
  c = config_lib.base_config()
  c.variant, c.seq_len, c.batch_size = variant, 16, 4
  c.data.update(num_sources=4, vocab_size=64, source_vocab_size=48)
  for k, v in data.items():
    c.data[k] = v
  return c


def global_rows(variant, **data):
  """Each source's first training rows, in global ids."""
  bundle = synthetic.build(config(variant, **data))
  out = {}
  for s in bundle.sources:
    rows = np.stack([s.windows[i] for i in range(3)])
    if variant in ("trim", "spec", "spec_opt"):
      rows = synthetic.owned_ids(0, int(s.name[len("source"):]), 64)[rows]
    out[s.name] = rows
  return out


def test_every_variant_trains_on_the_same_chains():
  reference = global_rows("std")
  for variant in ("glob", "trim", "spec", "spec_opt"):
    got = global_rows(variant)
    assert got.keys() == reference.keys()
    for name in reference:
      np.testing.assert_array_equal(got[name], reference[name], err_msg=(variant, name))


def test_spec_opt_vocabulary_is_the_chain_states():
  spec = synthetic.build(config("spec"))
  spec_opt = synthetic.build(config("spec_opt"))
  assert [s.vocab_size for s in spec_opt.sources] == [s.vocab_size for s in spec.sources]
  assert len({s.vocab_size for s in spec_opt.sources}) == 4  # sizes differ per source


def test_a_chain_left_out_is_the_same_task_alone():
  full = global_rows("spec")
  kept = global_rows("spec", chains=(0, 1, 3), num_sources=3)
  alone = global_rows("spec_opt", chains=(2,), num_sources=1)
  assert list(kept) == ["source0", "source1", "source3"] and list(alone) == ["source2"]
  for name, rows in {**kept, **alone}.items():
    np.testing.assert_array_equal(rows, full[name])


def test_some_global_ids_belong_to_no_chain():
  owned = set().union(*(synthetic.owned_ids(0, k, 64).tolist() for k in range(8)))
  assert owned and max(owned) < 60
