"""The paper's 125M DEPT preset on The Pile: 16 domains as 16 sources, GPT-NeoX-sized vocabulary.

  python -m dept_jax.main --mode=prepare --config configs/pile_125m.py:spec,/data/pile_by_domain,/models/neox/tokenizer.json
  python -m dept_jax.main --config configs/pile_125m.py:spec,/data/pile_by_domain,/models/neox/tokenizer.json \
      --workdir /mnt/gcs/BUCKET/runs/pile125m_spec
  # one domain's model for Hugging Face: the body, its table and its own pieces of the tokenizer.json
  python -m dept_jax.main --mode=export --workdir /mnt/gcs/BUCKET/runs/pile125m_spec --source FreeLaw \
      --out hf/pile125m_FreeLaw
  # check the memory before renting: python -m dept_jax.main --mode=compile --config configs/pile_125m.py

Argument: VARIANT[,DATA_ROOT[,TOKENIZER]]. DATA_ROOT has one subfolder per Pile domain (Ubuntu IRC
held out) holding text, .jsonl or .parquet files of any size. TOKENIZER is the paper's GPT-NeoX
tokenizer.json (or any sentencepiece .model / tokenizer.json); without it a 50,257-piece unigram
model is trained on a 64 MB sample streamed from every domain. `--mode=prepare` tokenizes the corpus
once into data.cache_dir (every host its share); training runs and variants then stream from it.

width 768, 12 blocks, 12 heads, seq 2048, global batch 256 (16 per source), peak lr 6e-4,
5,000 local steps in 10 rounds of 500. The paper reports DEPT's best variant ~15% lower perplexity
than STD after continued pre-training (at 350M); this preset is for reproducing the direction.
STD baselines beside it: VARIANT std_tau0 / std_tau1 (mixture sampled uniformly / by size). The
paper lowered STD's peak rate until it finished the schedule without diverging: find that rate with
--mode=study and study.lr_sweep (configs/study_folders.py), or pass --config.optim.lr.
"""
from dept_jax.config_lib import base_config
from dept_jax.data.text import paper_preset_data


def get_config(arg: str = "spec"):
  c = base_config()
  c.steps, c.local_steps = 5000, 500
  c.batch_size, c.seq_len = 16, 2048
  c.model.update(d_model=768, n_layers=12, n_heads=12, d_ff=2048, dtype="bfloat16",
                 remat="dots_no_batch", init_std=0.02)
  c.optim.update(lr=6e-4, warmup_steps=100)
  paper_preset_data(c, arg, default_variant="spec", sources=16, vocab_size=50257,
                    source_vocab_size=50257)
  c.log.every = 50
  c.checkpoint.every = 250
  return c
