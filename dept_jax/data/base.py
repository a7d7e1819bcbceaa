"""What the trainer needs from data: one stream of packed token windows per source.

Every data kind (synthetic, text folders, tfds, ...) returns a `DataBundle`. A stream yields rows of
seq_len + 1 token ids in that source's *local* vocabulary (what its embedding table indexes), and
its state can be saved and restored so a resumed run sees exactly the same next rows.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np


class SourceStream(Protocol):
  name: str
  vocab_size: int  # local vocabulary size (rows of this source's table that are real)
  train_tokens: int  # tokens in the training split (token-weighted means, STD temperature)

  def next_rows(self, n: int) -> np.ndarray:
    """The next n training windows, int32 [n, seq_len + 1]."""

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable position in the stream."""

  def set_state(self, state: dict[str, Any]) -> None:
    ...

  def eval_batches(self) -> list[dict[str, Any]]:
    """Held-out validation: [{'tokens': int32 [b, seq_len + 1] (-1 = padding), 'bytes': int}],
    where bytes counts the UTF-8 bytes of the text those tokens cover (for bits per byte)."""


@dataclasses.dataclass
class DataBundle:
  streams: list  # one SourceStream per source, in a fixed order
  global_vocab_size: int | None = None  # None when every source has its own tokenizer
  local_to_global: np.ndarray | None = None  # [K, max local vocab] global ids, -1 padding
  tokenizers: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> .model path
  # For STD (one model, global vocabulary) each source's rows in *global* ids.
  global_streams: list | None = None

  @property
  def names(self) -> list[str]:
    return [s.name for s in self.streams]


def temperature_probs(train_tokens, temperature: float) -> np.ndarray:
  """p_k proportional to n_k ** tau (tau=0 uniform, tau=1 proportional)."""
  n = np.asarray(train_tokens, np.float64)
  w = n ** temperature
  return w / w.sum()


class MixtureStream:
  """STD's single stream: each row comes from source k with probability p_k (temperature sampling).

  The draw for step t depends only on (seed, t), and each source stream keeps its own position,
  so the mixture's state is the step counter plus the sources' states.
  """

  def __init__(self, streams, probs, seed: int):
    self.streams, self.probs, self.seed = streams, np.asarray(probs), seed
    self.name, self.draws = "mixture", 0
    self.vocab_size = max(s.vocab_size for s in streams)
    self.train_tokens = sum(s.train_tokens for s in streams)

  def next_rows_with_sources(self, n: int):
    rng = np.random.default_rng([self.seed, 7919, self.draws])
    self.draws += 1
    ids = rng.choice(len(self.streams), size=n, p=self.probs)
    rows = np.empty((n,), dtype=object)
    for k in np.unique(ids):
      where = np.nonzero(ids == k)[0]
      got = self.streams[k].next_rows(len(where))
      for i, row in zip(where, got):
        rows[i] = row
    return np.stack(list(rows)).astype(np.int32), ids.astype(np.int32)

  def get_state(self):
    return {"draws": self.draws, "sources": [s.get_state() for s in self.streams]}

  def set_state(self, state):
    self.draws = state["draws"]
    for s, st in zip(self.streams, state["sources"]):
      s.set_state(st)
