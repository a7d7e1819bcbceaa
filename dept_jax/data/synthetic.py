"""A learnable synthetic task that needs no files: each source is its own Markov chain.

Source k speaks over its own subset of a global vocabulary (subsets overlap, some global ids belong
to nobody), so every variant's vocabulary rule is exercised: glob/std see global ids, trim/spec see
the trimmed local ids, spec_opt a private vocabulary. Whatever the variant, source k is the same
chain over the same states, so variants are compared on one task. A chain follows a fixed
successor with probability `p_follow`, else one of 3 alternatives, so the loss floor is far below
ln(vocab) and falling loss means the model learned the source.
"""
from __future__ import annotations

import dataclasses

import grain
import numpy as np

from dept_jax import variants
from dept_jax.data.base import DataBundle, SourceData


class MarkovSource:
  def __init__(self, name, n_states, emit, seq_len, batch_size, seed, index, p_follow=0.85):
    rng = np.random.default_rng([seed, 17, index])
    self.name, self.seq_len, self.seed, self.index = name, seq_len, seed, index
    self.emit = np.asarray(emit, np.int32)  # local state -> emitted id
    self.n_states = n_states
    self.succ = rng.permutation(n_states)
    self.alt = rng.integers(0, n_states, size=(n_states, 3))
    self.p_follow = p_follow
    self.vocab_size = int(self.emit.max()) + 1
    self.batch_size = batch_size
    self.train_tokens = 1_000_000 * (1 + index)  # nominal size: makes temperature sampling matter
    self.eval_count = 2

  def _rows(self, split: int, start: int, n: int) -> np.ndarray:
    out = np.empty((n, self.seq_len + 1), np.int32)
    for i in range(n):
      rng = np.random.default_rng([self.seed, self.index, split, start + i])
      follow = rng.random(self.seq_len) < self.p_follow
      pick = rng.integers(0, 3, size=self.seq_len)
      s = int(rng.integers(0, self.n_states))
      out[i, 0] = s
      for t in range(self.seq_len):
        s = int(self.succ[s]) if follow[t] else int(self.alt[s, pick[t]])
        out[i, t + 1] = s
    return self.emit[out]

  def __len__(self) -> int:
    return 2**31 - 1  # rows are generated on demand: as many as anyone asks for

  def __getitem__(self, i: int) -> np.ndarray:
    """Training row i (random access, as grain's data sources are)."""
    return self._rows(0, int(i), 1)[0]

  def data(self) -> SourceData:
    return SourceData(self.name, grain.MapDataset.source(self), self.vocab_size,
                      self.train_tokens, self.eval_batches())

  def eval_batches(self):
    n_batches = self.eval_count
    batches = []
    for b in range(n_batches):
      tokens = self._rows(1, b * self.batch_size, self.batch_size)
      batches.append({"tokens": tokens, "bytes": int(tokens[:, 1:].size)})  # one byte a token
    return batches


def chain_indices(data) -> list[int]:
  """Which chains a config builds: data.chains if set (e.g. a study holding one out), else
  0..num_sources-1."""
  chains = list(data.get("chains", ()) or ())
  return [int(k) for k in chains] if chains else list(range(data.num_sources))


def owned_ids(seed: int, chain: int, G: int) -> np.ndarray:
  """The global ids chain k speaks: drawn from its own seed, so a chain is the same task whichever
  other chains are built. The top 1/16 of the vocabulary belongs to no chain."""
  pool = G - max(1, G // 16)
  n_k = int(pool * (0.5 + 0.1 * (chain % 4)))  # sizes differ per source
  rng = np.random.default_rng([seed, 3, chain])
  return np.sort(rng.choice(pool, size=n_k, replace=False)).astype(np.int32)


def build(config) -> DataBundle:
  """Sources for config.variant from config.data.{num_sources or chains, vocab_size}.

  Every variant gets the same chains (same states, same sequences); only the ids differ: global
  ids for std/glob, trimmed local ids for trim/spec, and for spec_opt a private vocabulary of the
  chain's own states (so data.source_vocab_size, which sizes text tokenizers, is not used here).
  """
  d, vocabulary = config.data, variants.get(config.variant).vocabulary
  G = d.vocab_size
  chains = chain_indices(d)
  owned = {k: owned_ids(config.seed, k, G) for k in chains}

  def make(k, emit):
    src = MarkovSource(f"source{k}", len(owned[k]), emit, config.seq_len, config.batch_size,
                       config.seed, k)
    src.eval_count = d.eval_batches
    return src

  local = [make(k, np.arange(len(owned[k]))).data() for k in chains]
  if vocabulary == "own":
    return DataBundle(local)
  global_data = [make(k, owned[k]).data() for k in chains]
  if vocabulary == "global":
    l2g = np.tile(np.arange(G, dtype=np.int32), (len(chains), 1))
    sources = [dataclasses.replace(s, vocab_size=G) for s in global_data]
  else:  # trimmed: local ids index the trimmed vocabulary
    sources = local
    l2g = np.full((len(chains), max(len(owned[k]) for k in chains)), -1, np.int32)
    for i, k in enumerate(chains):
      l2g[i, :len(owned[k])] = owned[k]
  return DataBundle(sources, global_vocab_size=G, local_to_global=l2g,
                    global_windows=[s.windows for s in global_data],
                    global_eval_batches=[s.eval_batches for s in global_data])
