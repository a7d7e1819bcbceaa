"""Configs for what follows pre-training: a new source on a trained body (plasticity), and SPEC's
global-embedding phase (one new global table over all sources, so one model serves them all)."""
from __future__ import annotations

import json
import math
import os

import ml_collections

from dept_jax.config_lib import ConfigError, base_config


def parent_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(os.path.expanduser(workdir), "config.json")
  if not os.path.exists(path):
    raise ConfigError(f"{path} not found: the parent must be a dept_jax run directory. Fix: pass "
                      "the --workdir of a finished training run.")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _inherit(parent) -> ml_collections.ConfigDict:
  """A fresh config with the parent's model and shapes: the body must fit exactly."""
  c = base_config()
  c.model = parent.model
  c.seq_len, c.batch_size, c.seed = parent.seq_len, parent.batch_size, parent.seed
  c.optim = parent.optim
  return c


def new_source_config(parent_workdir: str, sources: dict | None = None, *, data=None,
                      steps: int = 200, local_steps: int = 50, freeze_body: bool = False):
  """Attach fresh tables and tokenizers for `sources` ({name: text.source(...)}) to the parent's
  body and train them (SPEC-OPT: each new source gets its own tokenizer). `data` instead of
  `sources`: a whole config.data block of another kind (e.g. synthetic chains)."""
  from dept_jax.data.text import add_text_data
  parent = parent_config(parent_workdir)
  c = _inherit(parent)
  c.variant = "spec_opt"
  c.steps, c.local_steps = steps, local_steps
  c.init_from.workdir = os.path.abspath(os.path.expanduser(parent_workdir))
  c.freeze_body = freeze_body
  if data is not None:
    c.data = data
    return c
  add_text_data(c, sources)
  if parent.data.get("source_vocab_size"):
    c.data.source_vocab_size = parent.data.source_vocab_size
  return c


def global_phase_config(parent_workdir: str, fraction: float = 0.17):
  """SPEC/SPEC-OPT -> one model: the parent's body, a fresh global table and global tokenizer,
  trained on the mixture of all the parent's sources for `fraction` of its steps (the paper: 15-19%)."""
  parent = parent_config(parent_workdir)
  if parent.data.kind != "text":
    raise ConfigError("the global-embedding phase needs a run trained on text sources.")
  c = _inherit(parent)
  c.variant = "std"
  c.data = parent.data
  c.data.num_sources = len(parent.data.sources)
  spec_global = os.path.join(os.path.expanduser(parent_workdir), "tokenizers", "global.model")
  # SPEC already has a global tokenizer (its vocabularies are trimmed from it); SPEC-OPT trains one.
  c.data.tokenizer = spec_global if os.path.exists(spec_global) else ""
  c.local_steps = parent.local_steps  # STD's eval cadence
  c.steps = max(c.local_steps, int(math.ceil(parent.steps * fraction / c.local_steps)) * c.local_steps)
  c.init_from.workdir = os.path.abspath(os.path.expanduser(parent_workdir))
  return c
