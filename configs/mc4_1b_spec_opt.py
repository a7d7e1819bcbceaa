"""The paper's 1.3B multilingual SPEC-OPT preset: 8 mC4 languages, each with its own 50,257-piece
unigram tokenizer and private embedding table; only the body is ever averaged.

  python -m dept_jax.main --mode=prepare --config configs/mc4_1b_spec_opt.py:spec_opt,/data/mc4_by_language
  python -m dept_jax.main --config configs/mc4_1b_spec_opt.py:spec_opt,/data/mc4_by_language \
      --workdir /mnt/gcs/BUCKET/runs/mc4_1b   # subfolders en it zh sr ms sw ur la

Argument: VARIANT[,DATA_ROOT[,TOKENIZER]]. SPEC-OPT trains each language's tokenizer on a 64 MB
sample streamed from it (sentencepiece needs tens of MB for 50,257 pieces); the other variants use
TOKENIZER as the global one (the paper's mT5 spiece.model, 250,112 pieces) or train one.
width 2048, 24 blocks, 16 heads, seq 2048, global batch 512 (64 per source), peak lr 2e-4,
7,000 local steps in 14 rounds of 500. Paper: the body sync every 500 steps moves ~714x fewer
parameters per step than STD's all-reduce, and per-source 50,257 tables use ~5x less embedding
memory than one mT5-sized (250,112) table.
STD baselines beside it: VARIANT std_tau0 / std_tau1 (mixture sampled uniformly / by size). The
paper lowered STD's peak rate until it finished the schedule without diverging: find that rate with
--mode=study and study.lr_sweep (configs/study_folders.py), or pass --config.optim.lr.
"""
from dept_jax.config_lib import base_config
from dept_jax.data.text import paper_preset_data


def get_config(arg: str = "spec_opt"):
  c = base_config()
  c.steps, c.local_steps = 7000, 500
  c.batch_size, c.seq_len = 64, 2048
  c.model.update(d_model=2048, n_layers=24, n_heads=16, d_ff=5504, dtype="bfloat16",
                 remat="dots_no_batch", init_std=0.02)
  c.optim.update(lr=2e-4, warmup_steps=100)
  paper_preset_data(c, arg, default_variant="spec_opt", sources=8, vocab_size=250112,
                    source_vocab_size=50257)
  c.log.every = 50
  c.checkpoint.every = 500
  return c
