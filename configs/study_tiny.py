"""A whole study on synthetic sources in minutes: every variant and both STD baselines, 3 seeds,
one source held out for the out-of-distribution score, and STD's learning-rate sweep.

  python -m dept_jax.main --mode=study --config configs/study_tiny.py --workdir runs/study_tiny

Trains 3 synthetic Markov-chain sources (source3 is held out, then adapted to for 50 steps on each
trained body) at 3 x 100 x 8 x 64 = 153,600 tokens per cell. Expect runs/study_tiny/results.md
with every arm's bits per byte falling well below ln(256)/ln(2) = 8 and below 4, a paired
difference against the better STD arm with 95% intervals, and curves.png / final_bpb.png.
About 20 minutes on a 2-core CPU (measured: see bench/RESULTS.md). A smoke version:
--config.study.seeds="(0, 1)" --config.study.variants="('std_tau1', 'spec')".
"""
from dept_jax.config_lib import base_config
from dept_jax.study.grid import study_block


def get_config(arg: str = ""):
  c = base_config()
  c.steps, c.local_steps = 100, 25
  c.batch_size, c.seq_len = 8, 64
  c.data.num_sources = 4
  c.log.every = 25
  c.study = study_block(seeds=(0, 1, 2), holdout="source3", ood_steps=50,
                        lr_sweep=(3e-3, 1e-2, 3e-2))
  return c
