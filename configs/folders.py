"""Train on your own text: each subfolder of DIR is one source, named after it.

  python -m dept_jax.main --config configs/folders.py:/path/to/DIR --workdir runs/mine

A subfolder may hold text files of any kind (.txt, .md, source code: anything UTF-8, read
recursively), .jsonl files (field 'text') or .parquet files (column 'text'); each file, line or row
is a document. Sources train SPEC-OPT (one tokenizer per source, trained into WORKDIR/tokenizers/
on first run) unless overridden, e.g. --config.variant=trim. Per-source settings can be changed
from the command line: --config.data.sources.<name>.weight=2 (STD sampling weight),
--config.data.sources.<name>.field=body, --config.data.sources.<name>.tokenizer=/path/x.model.
Expect every source's eval/<name>/bits_per_byte to fall; give each source at least a few hundred
KB of text (and more than one file: validation is held out by whole documents).
"""
from dept_jax.config_lib import base_config
from dept_jax.data.text import add_text_data, folder_sources


def get_config(arg: str = ""):
  if not arg:
    from dept_jax.data.base import DataError
    raise DataError("configs/folders.py needs a folder. Fix: --config configs/folders.py:/path/DIR")
  c = base_config()
  c.variant = "spec_opt"
  c.steps = 400
  c.local_steps = 50
  c.batch_size = 8
  c.seq_len = 128
  c.model.d_model = 128
  c.model.n_heads = 4
  c.model.d_ff = 344
  add_text_data(c, folder_sources(arg))
  c.data.vocab_size = 2048
  c.data.source_vocab_size = 1024
  c.log.every = 25
  return c
