"""Tiny DEPT run on synthetic sources it makes itself: a smoke test that learns, in well under a
minute on a laptop CPU. The argument picks the variant (std, glob, trim, spec, spec_opt, or the
STD baselines std_tau0 / std_tau1).

  python -m dept_jax.main --config configs/tiny.py:spec --workdir runs/tiny

Expect every source's train loss to fall from ~5.3 (ln of the vocabulary) to below 2.5, with
four rounds of 25 local steps and an outer step after each (comm/outer_bytes in metrics.jsonl).
"""
from dept_jax.config_lib import base_config, set_variant


def get_config(variant: str = "spec"):
  c = base_config()
  set_variant(c, variant or "spec")
  c.steps = 100
  c.local_steps = 25
  c.batch_size = 8
  c.seq_len = 64
  c.data.num_sources = 4
  c.log.every = 10
  return c
