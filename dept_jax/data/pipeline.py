"""Packed token windows per source, served by grain with a saveable iterator state.

Training: each document's tokens followed by EOS, concatenated into one stream; window i is
stream[i*L : i*L + L + 1] (consecutive windows share one token, so every token is a target once).
grain serves window indices: this host's shard of them, shuffled from the seed, reshuffled every
epoch, repeated forever. The iterator's state (the next index) is the stream's whole position, so a
restored stream yields exactly the rows an uninterrupted one would have.

Validation: held-out text, cut into chunks at line ends, packed the same way after a leading EOS
(so the first real token is a target too), padded with -1. Each chunk's UTF-8 byte count is spread
over its tokens, so a row's bytes are (to within a chunk) those of the text its targets encode,
and the sum over whole chunks is exact.
"""
from __future__ import annotations

import zlib

import grain
import numpy as np

from dept_jax.data.sources import fail


def pack_stream(docs_tokens: list[np.ndarray], eos: int) -> np.ndarray:
  """One int32 stream: doc0 EOS doc1 EOS ..."""
  parts = []
  for t in docs_tokens:
    parts += [t, np.asarray([eos], np.int32)]
  return np.concatenate(parts).astype(np.int32) if parts else np.zeros((0,), np.int32)


def num_windows(stream_len: int, seq_len: int) -> int:
  return max(0, (stream_len - 1) // seq_len)


def window(stream: np.ndarray, i, seq_len: int) -> np.ndarray:
  return stream[i * seq_len: i * seq_len + seq_len + 1]


def shuffle_seed(seed: int, name: str) -> int:
  return int(np.random.default_rng([seed, zlib.crc32(name.encode())]).integers(0, 2**31 - 1))


def line_chunks(text: str, max_chars: int = 2048) -> list[str]:
  """text cut after line ends into pieces of at most ~max_chars (a longer line is cut as is)."""
  out, cur, n = [], [], 0
  for line in text.splitlines(keepends=True):
    while len(line) > max_chars:
      if cur:
        out.append("".join(cur))
        cur, n = [], 0
      out.append(line[:max_chars])
      line = line[max_chars:]
    if n + len(line) > max_chars and cur:
      out.append("".join(cur))
      cur, n = [], 0
    cur.append(line)
    n += len(line)
  if cur:
    out.append("".join(cur))
  return out


def eval_rows(chunks, eos: int, seq_len: int, max_rows: int | None = None):
  """(rows int32 [n, L+1] with -1 padding, bytes per row) from chunks = [(tokens, nbytes, last)].

  All chunks by default; with max_rows it stops there, and a chunk cut at that point counts its
  bytes pro rata."""
  toks, weights = [np.asarray([eos], np.int32)], [np.zeros((1,), np.float64)]
  total = 1
  limit = max_rows * seq_len + 1 if max_rows else float("inf")
  for tokens, nbytes, ends_doc in chunks:
    if total >= limit:
      break
    t = np.concatenate([tokens, [eos]]).astype(np.int32) if ends_doc else tokens.astype(np.int32)
    w = np.zeros(len(t), np.float64)
    w[:len(tokens)] = nbytes / max(len(tokens), 1)  # spread evenly: a cut chunk counts pro rata
    if total + len(t) > limit:
      t, w = t[:limit - total], w[:limit - total]
    toks.append(t)
    weights.append(w)
    total += len(t)
  stream, wts = np.concatenate(toks), np.concatenate(weights)
  n = max(1, -(-(len(stream) - 1) // seq_len))
  pad = n * seq_len + 1 - len(stream)
  stream = np.concatenate([stream, np.full(pad, -1, np.int32)])
  wts = np.concatenate([wts, np.zeros(pad)])
  idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None]
  rows = stream[idx]
  row_bytes = wts[idx[:, 1:]].sum(axis=1)  # bytes of the targets (position 0 is context only)
  return rows, row_bytes


class TextStream:
  """One source's training windows (see the module docstring) and its validation batches.

  stream holds token ids in the tokenizer's ids; id_map (optional) turns them into the ids this
  stream emits (TRIM/SPEC: global -> local, ids the source does not own -> its <unk>, whose
  tokenizer id is unk_id). shard (index, count): this host reads windows
  index, index + count, ... so hosts never see the same window.
  """

  def __init__(self, name, stream, vocab_size, seq_len, batch_size, seed, eval_rows_bytes,
               id_map=None, shard=(0, 1), train_tokens=None, unk_id=0):
    self.name, self.seq_len, self.batch_size = name, seq_len, batch_size
    self.unk_id = unk_id
    self.vocab_size = int(vocab_size)
    self.stream, self.id_map = stream, id_map
    self.windows = num_windows(len(stream), seq_len)
    index, count = shard
    mine = len(range(index, self.windows, count))
    if mine < batch_size:
      fail(name, f"has {self.windows} training windows of seq_len+1={seq_len + 1} tokens"
           + (f" ({mine} on this host of {count})" if count > 1 else "")
           + f", fewer than one batch (batch_size={batch_size})",
           "add text to this source, or lower batch_size or seq_len")
    self.train_tokens = int(train_tokens if train_tokens is not None else len(stream))
    ds = grain.MapDataset.range(self.windows)
    if count > 1:
      ds = ds[index::count]
    ds = ds.shuffle(seed=shuffle_seed(seed, name)).repeat()
    ds = ds.map(lambda i: window(stream, i, seq_len))
    # In-thread reads: a row is a slice, so worker threads would only add hand-off latency.
    self._ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    self._it = iter(self._ds)
    self._eval = eval_rows_bytes
    self._eval_cache = None

  def _emit(self, tokens: np.ndarray) -> np.ndarray:
    if self.id_map is None:
      return tokens
    return np.where(tokens >= 0, self.id_map[np.maximum(tokens, 0)], -1).astype(np.int32)

  def _unowned_targets(self, rows: np.ndarray) -> int:
    """Held-out targets that id_map turns into <unk> though the text had a real token there:
    TRIM/SPEC's bits per byte score those as <unk>, which is easier than the true token."""
    targets = rows[:, 1:]
    local = self.id_map[np.maximum(targets, 0)]
    unk_local = self.id_map[self.unk_id]
    return int(((targets >= 0) & (targets != self.unk_id) & (local == unk_local)).sum())

  def next_rows(self, n: int) -> np.ndarray:
    rows = np.stack([next(self._it) for _ in range(n)])
    return self._emit(rows)

  def get_state(self):
    return {"grain": self._it.get_state(), "windows": self.windows}

  def set_state(self, state):
    if int(state.get("windows", self.windows)) != self.windows:
      fail(self.name, f"the saved data position is for {state['windows']} windows but the data "
           f"now has {self.windows}", "resume with the same sources, tokenizer, seq_len and hosts")
    self._it.set_state(state["grain"])

  def eval_batches(self):
    """[{'tokens': int32 [batch_size, L+1] (-1 padding), 'bytes': int}] of held-out text, plus
    'unowned_targets' (see _unowned_targets) when the stream maps ids."""
    if self._eval_cache is None:
      rows, row_bytes = self._eval
      out, b = [], self.batch_size
      for s in range(0, len(rows), b):
        r = rows[s:s + b]
        if len(r) < b:  # constant shapes for jit: pad with rows that predict nothing
          r = np.concatenate([r, np.full((b - len(r), r.shape[1]), -1, np.int32)])
        batch = {"tokens": self._emit(r), "bytes": int(round(row_bytes[s:s + b].sum()))}
        if self.id_map is not None:
          batch["unowned_targets"] = self._unowned_targets(r)
        out.append(batch)
      self._eval_cache = out
    return self._eval_cache
