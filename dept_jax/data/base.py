"""What the trainer needs from data, and the one error type data problems raise.

Every data kind (synthetic, text) returns a `DataBundle`: per source, a random-access grain
`MapDataset` of training windows (element i: int32 [seq_len + 1] in the ids that source's table
indexes; the dataset is infinite, shuffled anew each epoch), the source's vocabulary size, its
training tokens and its held-out eval batches. Because element i is a pure function of i, a run's
data position is just its step: resume is exact by construction and every host can read exactly
the rows it needs (dept_jax/data/feed.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dept_jax.config_lib import ConfigError


class DataError(ConfigError):
  """Input that cannot become a source; the message names the source, the file and the fix."""


def fail(name: str, problem: str, fix: str):
  raise DataError(f"source '{name}': {problem}. Fix: {fix}.")


def say(msg: str):
  """A console line, as the trainer prints them (first host only)."""
  import jax
  if jax.process_index() == 0:
    print(f"[dept_jax] {msg}", flush=True)


@dataclasses.dataclass
class SourceData:
  name: str
  windows: Any  # grain.MapDataset: element i -> int32 [seq_len + 1] (model ids of this source)
  vocab_size: int  # real rows of this source's table (ids past it are padding)
  train_tokens: int  # tokens in the training split (token-weighted means, STD's mixture)
  eval_batches: list  # [{'tokens': int32 [b, L+1] (-1 padding), 'bytes': int, ...}]
  weight: float = 1.0  # scales the source's size in STD's mixture


@dataclasses.dataclass
class DataBundle:
  sources: list  # SourceData per source, fixed order
  global_vocab_size: int | None = None  # None when every source has its own tokenizer
  local_to_global: np.ndarray | None = None  # [K, max local vocab] global ids, -1 padding
  tokenizers: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> file in the run
  # Per source, the windows in *global* ids (STD's mixture trains on these); None for spec_opt.
  global_windows: list | None = None
  global_eval_batches: list | None = None  # STD scores every source in global ids

  @property
  def names(self) -> list[str]:
    return [s.name for s in self.sources]


def temperature_probs(train_tokens, temperature: float) -> np.ndarray:
  """p_k proportional to n_k ** tau (tau=0 uniform, tau=1 proportional)."""
  n = np.asarray(train_tokens, np.float64)
  w = n ** temperature
  return w / w.sum()
