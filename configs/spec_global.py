"""SPEC/SPEC-OPT's global-embedding phase: one model for every source. Keeps PARENT's body, attaches
a fresh global table (PARENT's global tokenizer for SPEC; a newly trained one for SPEC-OPT) and
trains on the temperature-sampled mixture of all PARENT's sources for 17% of its steps.

  python -m dept_jax.main --config configs/spec_global.py:runs/demo --workdir runs/demo_global
  python -m dept_jax.main --mode=export --workdir runs/demo_global --source prose --out hf/demo

Expect eval/<source>/bits_per_byte of the single model to approach the per-source models'.
"""
from dept_jax.continued import global_phase_config


def get_config(arg: str = ""):
  if not arg:
    from dept_jax.config_lib import ConfigError
    raise ConfigError("configs/spec_global.py needs the parent run. Fix: --config "
                      "configs/spec_global.py:runs/demo")
  return global_phase_config(arg)
