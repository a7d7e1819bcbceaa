"""The paper's 125M DEPT preset on The Pile: 16 domains as 16 sources, GPT-NeoX-sized vocabulary.

  python -m dept_jax.main --config configs/pile_125m.py:spec --workdir gs://BUCKET/runs/pile125m_spec \
      --config.data.root=/path/to/pile_by_domain
  # check the memory before renting: python -m dept_jax.main --mode=compile --config configs/pile_125m.py

width 768, 12 blocks, 12 heads, seq 2048, global batch 256 (16 per source), peak lr 6e-4,
5,000 local steps in 10 rounds of 500. The paper reports DEPT's best variant ~15% lower perplexity
than STD after continued pre-training (at 350M); this preset is for reproducing the direction.
`data.root` is a folder with one subfolder of text per Pile domain (Ubuntu IRC held out).
"""
from dept_jax.config_lib import base_config


def get_config(variant: str = "spec"):
  c = base_config()
  c.variant = variant or "spec"
  c.steps, c.local_steps = 5000, 500
  c.batch_size, c.seq_len = 16, 2048
  c.model.update(d_model=768, n_layers=12, n_heads=12, d_ff=2048, dtype="bfloat16",
                 remat="dots_no_batch", init_std=0.02)
  c.optim.update(lr=6e-4, warmup_steps=100)
  c.data.update(num_sources=16, vocab_size=50257, source_vocab_size=50257)
  c.data.kind = "text"
  c.log.every = 50
  c.checkpoint.every = 250
  return c
