"""Data for DEPT: per source, random-access training windows and held-out eval batches (base.py).

read (documents.py) -> tokenize once (tokenizers.py) -> cache (cache.py) -> windows (windows.py)
-> per-host step batches (feed.py); text.py runs that flow for real text, synthetic.py makes
learnable sources without files, run_record.py keeps what a run needs to be evaluated later.
"""
from dept_jax.data.base import DataBundle, DataError, SourceData, temperature_probs  # noqa: F401


def build_data(config, workdir: str | None = None, training: bool = True) -> DataBundle:
  """The run's sources for config.data.kind: 'synthetic' (no files) or 'text' (real sources).
  training=False (eval, export, generate): a text run's data comes from its own record."""
  if config.data.kind == "synthetic":
    from dept_jax.data import synthetic
    return synthetic.build(config)
  if config.data.kind == "text":
    from dept_jax.data import text
    return text.build(config, workdir, training)
  from dept_jax.config_lib import ConfigError
  raise ConfigError(f"config.data.kind: unknown data kind '{config.data.kind}'. "
                    "Fix: use 'synthetic' or 'text'.")
