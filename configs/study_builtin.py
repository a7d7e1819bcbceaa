"""What DEPT buys on the built-in corpus (real text every Python machine holds: prose, Python,
C headers, licences, message catalogues): every variant and both STD baselines, 3 seeds, one
language held out for the out-of-distribution score, STD's learning-rate sweep.

  python -m dept_jax.main --mode=study --config configs/study_builtin.py --workdir runs/study_builtin

The demo's model and schedule (d_model 128, 400 local steps, rounds of 50, 8 x 128 per source);
msg_ja (else the last source) is held out of training, and each trained body then gets a fresh
1,024-piece tokenizer and table for it, trained 100 steps the same way for every cell. STD trains
at 1.5e-3, 3e-3 and 6e-3 (seed 0) and keeps the highest rate that finishes without diverging (the
paper's protocol); DEPT keeps optim.lr = 3e-3 (--config.study.lr_sweep_arms=all sweeps every arm).
Expect runs/study_builtin/results.md: each arm's bits per byte per source (mean +- std over 3
seeds), the paired difference against the better STD arm with 95% intervals, tokens seen, wall
time, bytes communicated, and curves.png / final_bpb.png. CPU time: see bench/RESULTS.md (study
cost); with GPUs, --config.study.devices_per_cell=1 runs one cell per GPU side by side.
"""
from dept_jax.config_lib import base_config
from dept_jax.data import corpus
from dept_jax.data.text import add_text_data, source
from dept_jax.study.grid import study_block

SOURCES = ("prose", "python", "c_headers", "licences", "msg_de", "msg_ja")


def get_config(arg: str = ""):
  c = base_config()
  c.steps, c.local_steps = 400, 50
  c.batch_size, c.seq_len = 8, 128
  c.model.update(d_model=128, n_heads=4, d_ff=344)
  c.optim.update(lr=3e-3, warmup_steps=20)
  names = corpus.available(SOURCES)
  add_text_data(c, {name: source(name, format="builtin") for name in names})
  c.data.update(vocab_size=2048, source_vocab_size=1024, tokenizer_train_bytes=500_000,
                eval_batches=8)
  c.log.every = 25
  c.study = study_block(holdout="msg_ja" if "msg_ja" in names else names[-1], ood_steps=100,
                        lr_sweep=(1.5e-3, 3e-3, 6e-3))
  return c
