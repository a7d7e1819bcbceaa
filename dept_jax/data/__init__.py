"""Data for DEPT: one stream of packed token windows per source (see base.py for the contract)."""
from dept_jax.data.base import DataBundle, MixtureStream, temperature_probs  # noqa: F401


def build_data(config, workdir: str | None = None) -> DataBundle:
  """The run's sources for config.data.kind: 'synthetic' (no files) or 'text' (real sources)."""
  if config.data.kind == "synthetic":
    from dept_jax.data import synthetic
    return synthetic.build(config)
  if config.data.kind == "text":
    from dept_jax.data import text  # real sources, tokenizers, grain pipeline
    return text.build(config, workdir)
  from dept_jax.config_lib import ConfigError
  raise ConfigError(f"config.data.kind: unknown data kind '{config.data.kind}'. "
                    "Fix: use 'synthetic' or 'text'.")
