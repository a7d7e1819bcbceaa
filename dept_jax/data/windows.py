"""From a source's cached tokens to training windows and evaluation rows.

Training: the source's training documents, each followed by EOS, form one token stream (its units'
shards one after another); window i is stream[i*L : i*L + L + 1] (consecutive windows share one
token, so every token is a target once per epoch). `TokenWindows` is a grain random-access source
that reads a window from the shard files on demand, so memory does not grow with the corpus; grain
shuffles it (anew each epoch) and repeats it.

Evaluation: held-out documents, each encoded whole once, laid out as EOS doc EOS doc ... and cut
into rows of L+1 (padding -1). Every target token carries the UTF-8 bytes it covers (from the
tokenizer's offsets), so a row's bytes are exact integers and the bytes of a whole document are its
length for any tokenizer. Where the byte budget ends inside a document, it is cut at a token
boundary and gets no EOS.
"""
from __future__ import annotations

import zlib

import grain
import numpy as np

from dept_jax.data.base import DataError


def shuffle_seed(seed: int, name: str) -> int:
  return int(np.random.default_rng([seed, zlib.crc32(name.encode())]).integers(0, 2**31 - 1))


class TokenWindows:
  """Random-access windows over shard files [(path, tokens, dtype)] (grain's data-source protocol).
  Reads go through np.fromfile at an offset: no file handle or mapping is held between reads.
  A read that comes back short, or with an id at or past `vocab_size`, means a damaged or
  vanished cache and stops training with the source, the shard and the fix."""

  def __init__(self, shards, seq_len: int, name: str = "", vocab_size: int | None = None):
    shards = [s for s in shards if s[1] > 0]
    self.paths = [s[0] for s in shards]
    self.dtypes = [np.dtype(s[2]) for s in shards]
    self.starts = np.concatenate([[0], np.cumsum([s[1] for s in shards])]).astype(np.int64)
    self.seq_len, self.name, self.vocab_size = seq_len, name, vocab_size

  def __len__(self) -> int:
    return max(0, int(self.starts[-1] - 1) // self.seq_len)

  def __getitem__(self, i: int) -> np.ndarray:
    i = int(i) % len(self)
    a = i * self.seq_len
    b = a + self.seq_len + 1
    out = np.empty((b - a,), np.int32)
    k = int(np.searchsorted(self.starts, a, side="right")) - 1
    pos = a
    while pos < b:  # a window may cross from one shard into the next
      n = min(b, int(self.starts[k + 1])) - pos
      dt = self.dtypes[k]
      try:
        got = np.fromfile(self.paths[k], dt, n, offset=(pos - int(self.starts[k])) * dt.itemsize)
      except OSError as e:
        self._damaged(k, e.strerror or str(e))
      if len(got) != n:
        self._damaged(k, f"{len(got)} of {n} tokens read")
      out[pos - a:pos - a + n] = got
      pos += n
      k += 1
    if self.vocab_size is not None and out.max() >= self.vocab_size:
      self._damaged(k - 1, f"token id {int(out.max())} is past the vocabulary ({self.vocab_size})")
    return out

  def _damaged(self, k: int, what: str):
    raise DataError(f"source '{self.name}': the token cache shard {self.paths[k]} is damaged or "
                    f"gone ({what}). Fix: run --mode=prepare with this config (it checks every "
                    "shard and makes bad ones again), then the same training command to resume.")


def training_windows(source, seed: int, name: str, id_map: np.ndarray | None = None):
  """Infinite grain MapDataset of a random-access window source: shuffled anew each epoch, mapped
  into the source's local ids when id_map is given (TRIM/SPEC)."""
  ds = grain.MapDataset.source(source).shuffle(seed=shuffle_seed(seed, name)).repeat()
  if id_map is not None:
    ds = ds.map(lambda w: id_map[w])
  return ds


def eval_rows(docs, eos: int, seq_len: int, budget_bytes: int):
  """(rows int32 [n, L+1] padded with -1, bytes int64 [n]) from docs [(ids, byte ends, bytes)]
  taken in order until budget_bytes; a row's bytes are those its targets cover."""
  toks, nbytes, used = [np.asarray([eos], np.int32)], [np.zeros((1,), np.int64)], 0
  for ids, ends, doc_bytes in docs:
    remaining = budget_bytes - used
    if remaining <= 0:
      break
    per_token = np.diff(np.concatenate([[0], ends])).astype(np.int64)
    if len(per_token):
      per_token[-1] += doc_bytes - int(ends[-1])  # bytes no token claims (e.g. a trailing space)
    if doc_bytes <= remaining:
      toks += [ids.astype(np.int32), np.asarray([eos], np.int32)]
      nbytes += [per_token, np.zeros((1,), np.int64)]
      used += doc_bytes
      continue
    cut = int(np.searchsorted(ends, remaining, side="right"))  # tokens wholly inside the budget
    toks.append(ids[:cut].astype(np.int32))
    nbytes.append(per_token[:cut])
    used += int(per_token[:cut].sum())
    break
  stream, sbytes = np.concatenate(toks), np.concatenate(nbytes)
  n = max(1, -(-(len(stream) - 1) // seq_len))
  pad = n * seq_len + 1 - len(stream)
  stream = np.concatenate([stream, np.full((pad,), -1, np.int32)])
  sbytes = np.concatenate([sbytes, np.zeros((pad,), np.int64)])
  idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None]
  return stream[idx], sbytes[idx[:, 1:]].sum(axis=1)


def eval_batches(rows, row_bytes, batch_size: int, id_map=None, unk_id=None) -> list[dict]:
  """[{'tokens': int32 [batch_size, L+1] (-1 padding), 'bytes': int}] (+ 'unowned_targets' when
  ids are mapped: held-out targets the source's vocabulary lacks, scored as its <unk>)."""
  out = []
  for s in range(0, len(rows), batch_size):
    r, b = rows[s:s + batch_size], int(row_bytes[s:s + batch_size].sum())
    if len(r) < batch_size:  # constant shapes for jit: pad with rows that predict nothing
      r = np.concatenate([r, np.full((batch_size - len(r), r.shape[1]), -1, np.int32)])
    batch = {"tokens": r, "bytes": b}
    if id_map is not None:
      targets = r[:, 1:]
      local = id_map[np.maximum(targets, 0)]
      batch["unowned_targets"] = int(((targets >= 0) & (targets != unk_id)
                                      & (local == id_map[unk_id])).sum())
      batch["tokens"] = np.where(r >= 0, id_map[np.maximum(r, 0)], -1).astype(np.int32)
    out.append(batch)
  return out
