"""The paper's 125M DEPT preset on The Pile: 16 domains as 16 sources, GPT-NeoX-sized vocabulary.

  python -m dept_jax.main --config configs/pile_125m.py:spec,/path/to/pile_by_domain \
      --workdir /mnt/gcs/BUCKET/runs/pile125m_spec
  # check the memory before renting: python -m dept_jax.main --mode=compile --config configs/pile_125m.py

width 768, 12 blocks, 12 heads, seq 2048, global batch 256 (16 per source), peak lr 6e-4,
5,000 local steps in 10 rounds of 500. The paper reports DEPT's best variant ~15% lower perplexity
than STD after continued pre-training (at 350M); this preset is for reproducing the direction.
DATA_ROOT is a folder with one subfolder of text per Pile domain (Ubuntu IRC held out).
STD baselines beside it: VARIANT std_tau0 / std_tau1 (mixture sampled uniformly / by size). The
paper lowered STD's peak rate until it finished the schedule without diverging: find that rate with
--mode=study and study.lr_sweep (configs/study_folders.py), or pass --config.optim.lr.
"""
from dept_jax.config_lib import base_config, set_variant
from dept_jax.data.text import add_text_data, folder_sources


def get_config(arg: str = "spec"):
  """arg: VARIANT[,DATA_ROOT] (DATA_ROOT: one subfolder of text per source). VARIANT may be
  std_tau0 / std_tau1: the STD baseline with its mixture sampled uniformly / by size."""
  variant, _, root = (arg or "spec").partition(",")
  c = base_config()
  set_variant(c, variant or "spec")  # also std_tau0 / std_tau1: the STD baselines
  c.steps, c.local_steps = 5000, 500
  c.batch_size, c.seq_len = 16, 2048
  c.model.update(d_model=768, n_layers=12, n_heads=12, d_ff=2048, dtype="bfloat16",
                 remat="dots_no_batch", init_std=0.02)
  c.optim.update(lr=6e-4, warmup_steps=100)
  c.data.update(num_sources=16, vocab_size=50257, source_vocab_size=50257)
  add_text_data(c, folder_sources(root) if root else {})
  if not root:  # shapes only (--mode=compile, tests); training asks for the data root
    c.data.num_sources = 16
  c.log.every = 50
  c.checkpoint.every = 250
  return c
