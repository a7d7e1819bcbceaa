"""A whole study on synthetic sources in minutes: every variant and both STD baselines, 3 seeds,
one source held out for the out-of-distribution score, and a learning-rate sweep for every arm.

  python -m dept_jax.main --mode=study --config configs/study_tiny.py --workdir runs/study_tiny

Trains 3 synthetic Markov-chain sources (source3 is held out, then adapted to for 50 steps on each
trained body) at 3 x 100 x 8 x 64 = 153,600 tokens per cell; each arm trains at 3e-3, 1e-2 and
3e-2 (seed 0) and keeps the highest rate that finishes without diverging (the paper's rule; on
this toy nothing diverges). The paper's protocol sweeps STD only: --config.study.lr_sweep_arms=std.
On synthetic data SPEC and SPEC-OPT are the same run (there is no tokenizer to differ).
Expect runs/study_tiny/results.md with every arm's bits per byte far below ln(256)/ln(2) = 8, the
paired difference against the better STD arm with 95% intervals, and curves.png / final_bpb.png.
Cost and a measured output: bench/RESULTS.md (study). A smoke version:
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
                        lr_sweep=(3e-3, 1e-2, 3e-2), lr_sweep_arms="all")
  return c
