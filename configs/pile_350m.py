"""The paper's 350M DEPT preset on The Pile (16 domain sources).

  python -m dept_jax.main --config configs/pile_350m.py:spec,/data/pile_by_domain,/models/neox/tokenizer.json \
      --workdir /mnt/gcs/BUCKET/runs/pile350m_spec
  # one domain's model for Hugging Face: the body, its table and its own pieces of the tokenizer.json
  python -m dept_jax.main --mode=export --workdir /mnt/gcs/BUCKET/runs/pile350m_spec --source FreeLaw \
      --out hf/pile350m_FreeLaw

Argument: VARIANT[,DATA_ROOT[,TOKENIZER]], as in configs/pile_125m.py (prepare the data once with
--mode=prepare first). width 1024, 24 blocks, 16 heads, seq 2048, global batch 256 (16 per source),
peak lr 3e-4, 13,500 local steps in 27 rounds of 500. Paper: DEPT's best variant ~15.3% lower
perplexity than the best STD after continued pre-training; even the worst variant ~9.7% lower.
STD baselines beside it: VARIANT std_tau0 / std_tau1 (mixture sampled uniformly / by size). The
paper lowered STD's peak rate until it finished the schedule without diverging: find that rate with
--mode=study and study.lr_sweep (configs/study_folders.py), or pass --config.optim.lr.
"""
from dept_jax.config_lib import base_config
from dept_jax.data.text import paper_preset_data


def get_config(arg: str = "spec"):
  c = base_config()
  c.steps, c.local_steps = 13500, 500
  c.batch_size, c.seq_len = 16, 2048
  c.model.update(d_model=1024, n_layers=24, n_heads=16, d_ff=2816, dtype="bfloat16",
                 remat="dots_no_batch", init_std=0.02)
  c.optim.update(lr=3e-4, warmup_steps=100)
  paper_preset_data(c, arg, default_variant="spec", sources=16, vocab_size=50257,
                    source_vocab_size=50257)
  c.log.every = 50
  c.checkpoint.every = 500
  return c
