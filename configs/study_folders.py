"""The study on your own sources: each subfolder of DIR is one source (see configs/folders.py for
the formats); HOLDOUT, if given, is left out of training and used for the out-of-distribution
score (a fresh tokenizer and table on each trained body, 100 steps, the same for every cell).

  python -m dept_jax.main --mode=study --config configs/study_folders.py:/path/to/DIR,HOLDOUT \
      --workdir runs/study_mine

Every variant and both STD baselines, 3 seeds, at the token budget of 400 steps x sources x 8 x 128;
STD's learning-rate sweep 1.5e-3 / 3e-3 / 6e-3 keeps the highest rate that finishes without
diverging. Change the grid from the command line, e.g. --config.study.grid="local_steps=25,100"
--config.study.variants="('std_tau1', 'spec_opt')". Expect results.md, results.json, cells.csv,
curves.png and final_bpb.png in the workdir; the same command resumes an interrupted study.
"""
from dept_jax.config_lib import base_config
from dept_jax.data.text import add_text_data, folder_sources
from dept_jax.study.grid import study_block


def get_config(arg: str = ""):
  root, _, holdout = arg.partition(",")
  if not root:
    from dept_jax.data.base import DataError
    raise DataError("configs/study_folders.py needs a folder. Fix: --config "
                    "configs/study_folders.py:/path/DIR[,HOLDOUT_SOURCE]")
  c = base_config()
  c.steps, c.local_steps = 400, 50
  c.batch_size, c.seq_len = 8, 128
  c.model.update(d_model=128, n_heads=4, d_ff=344)
  c.optim.update(lr=3e-3, warmup_steps=20)
  add_text_data(c, folder_sources(root))
  c.data.update(vocab_size=2048, source_vocab_size=1024)
  c.log.every = 25
  c.study = study_block(holdout=holdout, ood_steps=100, lr_sweep=(1.5e-3, 3e-3, 6e-3))
  return c
