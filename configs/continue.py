"""Plasticity: new sources (e.g. a held-out language) on a trained DEPT body. Each subfolder of
NEW_DIR becomes a source with a fresh random table and its own tokenizer; the body starts from
PARENT's global body and trains too, unless --config.freeze_body=True.

  python -m dept_jax.main --config configs/continue.py:runs/demo,/path/to/NEW_DIR --workdir runs/new

Expect eval/<new source>/bits_per_byte to fall faster than from a random body (the paper, Fig. 3:
DEPT bodies adapt faster than STD ones); compare by running the same with an STD parent.
"""
from dept_jax.continued import new_source_config
from dept_jax.data.text import folder_sources


def get_config(arg: str = ""):
  parent, _, new_dir = arg.partition(",")
  if not parent or not new_dir:
    from dept_jax.config_lib import ConfigError
    raise ConfigError("configs/continue.py needs PARENT_WORKDIR,NEW_DIR. Fix: --config "
                      "configs/continue.py:runs/demo,/path/to/new_sources")
  return new_source_config(parent, folder_sources(new_dir))
