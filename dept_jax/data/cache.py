"""The token cache: every source tokenized once, into flat token shards that any later run, variant,
seq_len and host memory-maps instead of reading text again.

Layout under CACHE/tokens/<id>/, one folder per (tokenizer file, its EOS id, val_fraction):
  units/<unit key>.tokens   the unit's training documents, each followed by EOS, as one flat
                            uint16 (vocabulary <= 65,536) or uint32 array
  units/<unit key>.npz      held-out documents (tokens, byte ends, content hashes), the training
                            documents' content hashes, and the unit's token histogram
  units/<unit key>.json     the manifest, written last: sizes, sha256 of both files, counts.
                            A unit is done exactly when its manifest exists (a killed preparation
                            leaves only *.tmp files, which are never read)
  sources/<key>.json|.npz   one source's index over its units: totals, the held-out documents
                            kept for evaluation (in content-hash order) and the duplicates dropped
Why flat token files rather than ArrayRecord records: a training window is a slice that may cross
documents, and any seq_len reuses the same cache (bench/RESULTS.md has the numbers).

Held-out documents are chosen by a hash of their content (the same for every tokenizer), so copies
always fall on the same side; a source holds out at least one (its first unit's lowest-hash
document when none falls under val_fraction). A held-out document whose whitespace- and
case-normalised text also occurs in training is dropped and counted. Each unit records a hash of
its documents, so a run can tell moved or touched files from changed ones. Preparation is
deterministic: the same inputs and tokenizer give the same bytes, whatever the number of workers
or hosts.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import json
import multiprocessing
import os
import signal
import threading
import zipfile
import zlib

import numpy as np

from dept_jax.data import documents, tokenizers
from dept_jax.data.base import DataError, fail, say
from dept_jax.file_hash import sha256_of

CACHE_VERSION = 1
ENCODE_BATCH_BYTES = 4 << 20  # text encoded per call: bounds a worker's memory
_VAL_KEY = b"dept_jax-validation-v1"


def cache_root(path: str = "") -> str:
  return os.path.expanduser(path or os.environ.get("DEPT_JAX_CACHE", "~/.cache/dept_jax"))


def val_score(raw: bytes) -> float:
  """Where a document falls in [0, 1): below val_fraction it is held out."""
  h = hashlib.blake2b(raw, digest_size=8, key=_VAL_KEY).digest()
  return int.from_bytes(h, "little") / 2.0**64


def normalized_hash(text: str) -> int:
  """Content hash that ignores whitespace and letter case (copies in scraped data differ so)."""
  norm = " ".join(text.split()).casefold().encode("utf-8")
  return int.from_bytes(hashlib.blake2b(norm, digest_size=8).digest(), "little")


def token_dtype(vocab_size: int):
  return np.uint16 if vocab_size <= 1 << 16 else np.uint32


class TokenCache:
  """The cache folder of one tokenizer (its file and EOS id) and one held-out fraction: everything
  that changes what a shard holds besides the unit's own inputs."""

  def __init__(self, root: str, tok: tokenizers.Tokenizer, val_fraction: float):
    self.tok, self.val_fraction = tok, float(val_fraction)
    ident = json.dumps([CACHE_VERSION, tok.fingerprint, tok.eos_id, self.val_fraction])
    self.id = hashlib.sha256(ident.encode()).hexdigest()[:32]
    self.dir = os.path.join(cache_root(root), "tokens", self.id)
    self.units_dir = os.path.join(self.dir, "units")

  def paths(self, key: str) -> dict:
    base = os.path.join(self.units_dir, key)
    return {"tokens": base + ".tokens", "npz": base + ".npz", "manifest": base + ".json"}

  def manifest(self, unit: documents.Unit, check_size: bool = True) -> dict | None:
    """The unit's manifest if it is complete (files present with their recorded sizes)."""
    p = self.paths(unit.key())
    try:
      with open(p["manifest"]) as f:
        m = json.load(f)
    except (OSError, ValueError):
      return None
    if m.get("cache") != self.id:
      raise DataError(f"source '{unit.source}': cache shard {p['manifest']} was written for "
                      f"cache {m.get('cache')} (another tokenizer or val_fraction), not this "
                      f"run's {self.id}. Fix: delete {self.dir} so it is rebuilt.")
    if check_size:
      for kind in ("tokens", "npz"):
        if not os.path.exists(p[kind]) or os.path.getsize(p[kind]) != m[f"{kind}_bytes"]:
          return None
    return m

  def verify(self, unit: documents.Unit) -> bool:
    """Whether the unit's files still match their checksums (reads them)."""
    m = self.manifest(unit)
    p = self.paths(unit.key())
    return m is not None and all(sha256_of(p[k]) == m[f"{k}_sha256"] for k in ("tokens", "npz"))

  def remove(self, unit: documents.Unit):
    for path in self.paths(unit.key()).values():
      if os.path.exists(path):
        os.remove(path)


# ----------------------------------------------------------------------------- one unit


def prepare_unit(unit: documents.Unit, cache: TokenCache, threads: int = 1) -> dict:
  """Tokenize one unit into its shard files; returns the manifest. Writes *.tmp files and renames
  them only when complete, the manifest last."""
  os.makedirs(cache.units_dir, exist_ok=True)
  tok, p = cache.tok, cache.paths(unit.key())
  suffix = f".tmp{os.getpid()}"
  tmp = {k: v + suffix for k, v in p.items()}
  try:
    m = _write_unit(unit, cache, tmp, threads)
    for kind in ("tokens", "npz"):
      os.replace(tmp[kind], p[kind])
    with open(tmp["manifest"], "w") as f:
      json.dump(m, f, sort_keys=True)
    os.replace(tmp["manifest"], p["manifest"])
    return m
  except OSError as e:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
      fail(unit.source, f"the disk filled while writing the token cache in {cache.dir} (input "
           f"{unit.where})", "free space or set data.cache_dir to a bigger disk, then run again: "
           "finished units are kept and the cache stays usable")
    raise
  finally:
    _remove_leftovers(tmp.values())


def _write_unit(unit, cache, tmp, threads) -> dict:
  tok, val_fraction = cache.tok, cache.val_fraction
  stats = documents.ReadStats()
  content = hashlib.sha256()  # of the documents themselves: equal for moved or touched files
  dtype = token_dtype(tok.vocab_size)
  eos = np.asarray([tok.eos_id], np.int32)
  counts = np.zeros((tok.vocab_size,), np.int64)
  sha = hashlib.sha256()
  train = {"docs": 0, "bytes": 0, "tokens": 0, "hashes": []}
  val = []  # (score, norm hash, text)
  pending, pending_bytes = [], 0
  held = None  # the lowest-scoring training document so far: held out if no other is

  with open(tmp["tokens"], "wb") as f:
    def flush():
      nonlocal pending, pending_bytes
      if not pending:
        return
      arr = np.concatenate([np.concatenate([ids, eos]) for ids in tok.encode(pending, threads)])
      arr = arr.astype(dtype)
      data = arr.tobytes()
      f.write(data)
      sha.update(data)
      counts[:] += np.bincount(arr, minlength=tok.vocab_size)[:tok.vocab_size]
      train["tokens"] += len(arr)
      pending, pending_bytes = [], 0

    def add_train(doc_score_hash):
      nonlocal pending_bytes
      _, nh, text = doc_score_hash
      n = len(text.encode("utf-8"))
      pending.append(text)
      pending_bytes += n
      train["docs"] += 1
      train["bytes"] += n
      train["hashes"].append(nh)
      if pending_bytes >= ENCODE_BATCH_BYTES:
        flush()

    for text in documents.read_unit(unit, stats):
      raw = text.encode("utf-8")
      content.update(len(raw).to_bytes(8, "little") + raw)
      doc = (val_score(raw), normalized_hash(text), text)
      if doc[0] < val_fraction:
        val.append(doc)
        continue
      if held is None or doc[0] < held[0]:
        held, doc = doc, held
      if doc is not None:
        add_train(doc)
    if held is not None:
      if val or not unit.holds_out_one:
        add_train(held)
      else:  # the source's first unit holds out at least one document
        val.append(held)
    flush()

  val.sort(key=lambda d: (d[0], d[1]))
  encoded = tok.encode_with_ends([d[2] for d in val])
  lengths = np.asarray([len(ids) for ids, _ in encoded], np.int64)
  with open(tmp["npz"], "wb") as f:  # a file object: numpy adds no ".npz" to the name
    np.savez_compressed(
        f, val_tokens=_concat([ids for ids, _ in encoded], np.int32),
        val_ends=_concat([ends for _, ends in encoded], np.int64),
        val_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        val_score=np.asarray([d[0] for d in val], np.float64),
        val_hash=np.asarray([d[1] for d in val], np.uint64),
        val_bytes=np.asarray([len(d[2].encode("utf-8")) for d in val], np.int64),
        train_hash=np.asarray(train["hashes"], np.uint64), counts=counts)
  npz_path = tmp["npz"]
  return {"version": CACHE_VERSION, "unit": unit.key(), "where": unit.where,
          "cache": cache.id, "content_sha256": content.hexdigest(), "dtype": np.dtype(dtype).name,
          "tokens": train["tokens"], "train_docs": train["docs"], "train_bytes": train["bytes"],
          "val_docs": len(val), "val_bytes": int(sum(len(d[2].encode("utf-8")) for d in val)),
          "replaced_bytes": stats.replaced, "skipped_files": stats.skipped_files,
          "tokens_bytes": os.path.getsize(tmp["tokens"]), "tokens_sha256": sha.hexdigest(),
          "npz_bytes": os.path.getsize(npz_path), "npz_sha256": sha256_of(npz_path)}


def _concat(arrays, dtype):
  return np.concatenate(arrays).astype(dtype) if arrays else np.zeros((0,), dtype)


# ----------------------------------------------------------------------------- many units


class PreparationStopped(Exception):
  """SIGTERM or SIGINT arrived while preparing; the units finished so far are kept."""


@contextlib.contextmanager
def _stop_on_signals():
  """SIGTERM/SIGINT raise PreparationStopped in the main thread, so the workers can be stopped
  and the message is one line, not a traceback."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def stop(signum, frame):
    raise PreparationStopped(signal.Signals(signum).name)
  old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield
  finally:
    for sig, handler in old.items():
      signal.signal(sig, handler)


_WORKER_TOKENIZERS: dict = {}


def _init_worker():
  """A worker dies with the process that started it (Linux), so a killed preparation leaves no
  orphans behind."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the workers itself
  try:
    import ctypes
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


def _job(args):
  """One unit in a worker process (spawned: no JAX, no fork of a threaded parent)."""
  unit, root, tok_path, eos_token, val_fraction = args
  key = (tok_path, eos_token)
  if key not in _WORKER_TOKENIZERS:
    _WORKER_TOKENIZERS[key] = tokenizers.load(tok_path, eos_token)
  return prepare_unit(unit, TokenCache(root, _WORKER_TOKENIZERS[key], val_fraction))


def prepare_units(jobs, root: str, workers: int, verify: bool = False) -> list:
  """Prepare the units of jobs [(unit, TokenCache)] that are missing (and, with verify, those
  whose checksums fail), in one pool of `workers` processes. Returns [(unit, manifest)] of the
  units prepared."""
  todo = []
  for u, c in jobs:
    if c.manifest(u) is None:
      todo.append((u, c))
    elif verify and not c.verify(u):
      say(f"source '{u.source}': cache shard for {u.where} does not match its checksum; "
          "preparing it again")
      c.remove(u)
      todo.append((u, c))
  workers = max(1, min(workers, len(todo)))
  with _stop_on_signals():
    if workers == 1:  # sentencepiece encodes a batch on every core by itself
      return [(u, prepare_unit(u, c, threads=os.cpu_count() or 1)) for u, c in todo]
    args = [(u, root, c.tok.path, getattr(c.tok, "eos_token", ""), c.val_fraction)
            for u, c in todo]
    ctx = multiprocessing.get_context("spawn")  # never fork a process that runs JAX's threads
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx,
                                                  initializer=_init_worker)
    try:
      return list(zip([u for u, _ in todo], pool.map(_job, args)))
    except concurrent.futures.process.BrokenProcessPool as e:
      raise DataError(f"a preparation worker process died ({e}). Fix: if you call dept_jax from "
                      "a script of your own, put its code under `if __name__ == '__main__':` "
                      "(workers re-import the script); if the machine ran out of memory, lower "
                      "data.workers or data.unit_mb; data.workers=1 tokenizes in this process."
                      ) from None
    finally:  # on any exit, no worker outlives the call (ProcessPoolExecutor has no terminate)
      for proc in list(getattr(pool, "_processes", {}).values()):
        proc.terminate()
      pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------- one source


class SourceCache:
  """A prepared source: its units' training tokens (memory-mapped on use), totals, the held-out
  documents kept for evaluation, and its token histogram."""

  def __init__(self, name: str, cache: TokenCache, units, index: dict, arrays: dict):
    self.name, self.cache, self.units = name, cache, list(units)
    self.index = index
    self.eval_unit, self.eval_doc = arrays["eval_unit"], arrays["eval_doc"]
    self.counts = arrays["counts"]

  @property
  def key(self) -> str:
    return self.index["key"]

  @property
  def train_tokens(self) -> int:
    return int(self.index["tokens"])

  def shards(self) -> list[tuple[str, int, str]]:
    """(tokens file, tokens, dtype) per unit, in order."""
    return [(self.cache.paths(u["unit"])["tokens"], u["tokens"], u["dtype"])
            for u in self.index["units"]]

  def eval_documents(self, budget_bytes: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Held-out documents in content-hash order, (ids, byte ends, bytes) each, until their bytes
    reach budget_bytes (the last one whole; the caller cuts it)."""
    out, total, loaded = [], 0, {}
    for u, d in zip(self.eval_unit, self.eval_doc):
      if total >= budget_bytes:
        break
      if u not in loaded:
        loaded[u] = _load_unit_arrays(self.name, self.cache, self.units[u])
      z = loaded[u]
      a, b = z["val_offsets"][d], z["val_offsets"][d + 1]
      out.append((z["val_tokens"][a:b], z["val_ends"][a:b], int(z["val_bytes"][d])))
      total += out[-1][2]
    return out


def open_source(name: str, units, cache: TokenCache) -> SourceCache:
  """The source's index, built once from its units' manifests (all must be prepared). The index
  is derived data: a damaged one is built again."""
  key = hashlib.sha256(json.dumps([CACHE_VERSION, cache.id,
                                   [u.key() for u in units]]).encode()).hexdigest()[:32]
  base = os.path.join(cache.dir, "sources", key)
  for attempt in range(2):
    if attempt or not os.path.exists(base + ".json"):
      _build_index(name, units, cache, key, base)
    try:
      with open(base + ".json") as f:
        index = json.load(f)
      with np.load(base + ".npz") as z:
        return SourceCache(name, cache, units, index, dict(z))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
      if attempt:
        raise DataError(f"source '{name}': the cache index {base}.json cannot be read ({e}). "
                        f"Fix: delete {os.path.dirname(base)} and run again.") from None


def _load_unit_arrays(name, cache, unit) -> dict:
  path = cache.paths(unit.key())["npz"]
  try:
    with np.load(path) as z:
      return dict(z)
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    fail(name, f"cache shard {path} (from {unit.where}) is damaged ({type(e).__name__}: {e})",
         "run --mode=prepare with this config: it checks every shard against its checksum and "
         "makes damaged ones again")


def _build_index(name, units, cache, key, base):
  manifests = []
  for u in units:
    m = cache.manifest(u)
    if m is None:
      fail(name, f"the token cache has no shard for {u.where}", "run --mode=prepare with this "
           "config (on every host of a multi-host run), or start training, which prepares it")
    manifests.append(m)
  if not sum(m["train_docs"] + m["val_docs"] for m in manifests):
    skipped = sum(m["skipped_files"] for m in manifests)
    fail(name, f"its {len(units)} unit(s) of input hold no text" +
         (f" ({skipped} binary files skipped)" if skipped else ""),
         "point the source at files that hold UTF-8 text (or the right field/column)")
  val_unit, val_doc, val_score, val_hash, val_bytes = [], [], [], [], []
  counts = np.zeros((cache.tok.vocab_size,), np.int64)
  train_hashes = []
  for i, u in enumerate(units):
    z = _load_unit_arrays(name, cache, u)
    n = len(z["val_score"])
    val_unit.append(np.full((n,), i, np.int32))
    val_doc.append(np.arange(n, dtype=np.int32))
    val_score.append(z["val_score"])
    val_hash.append(z["val_hash"])
    val_bytes.append(z["val_bytes"])
    train_hashes.append(z["train_hash"])
    counts += z["counts"]
  v_unit, v_doc = np.concatenate(val_unit), np.concatenate(val_doc)
  v_score, v_hash = np.concatenate(val_score), np.concatenate(val_hash)
  # A held-out document with a (normalised) copy in training would be scored on text the model
  # trained on: drop it. Copies inside the held-out set are kept once.
  in_train = np.zeros(len(v_hash), bool)
  for h in train_hashes:
    in_train |= np.isin(v_hash, h)
  order = np.lexsort((v_hash, v_score))
  _, first = np.unique(v_hash[order], return_index=True)
  keep_sorted = np.zeros(len(order), bool)
  keep_sorted[first] = True
  keep = np.zeros(len(v_hash), bool)
  keep[order] = keep_sorted
  repeats = int((~keep & ~in_train).sum())
  keep &= ~in_train
  eval_order = order[keep[order]]
  if not len(eval_order):
    fail(name, f"none of its held-out documents is left for evaluation ({int(in_train.sum())} "
         "had a copy in training)", "give the source more distinct documents, or raise "
         "data.val_fraction")
  content = [m["content_sha256"] for m in manifests]
  index = {
      "key": key, "name": name, "cache": cache.id,
      "units": [{"unit": m["unit"], "tokens": m["tokens"], "dtype": m["dtype"],
                 "where": m["where"], "first": u.first, "content_sha256": m["content_sha256"]}
                for u, m in zip(units, manifests)],
      "content_sha256": hashlib.sha256("".join(content).encode()).hexdigest(),
      "tokens": int(sum(m["tokens"] for m in manifests)),
      "train_docs": int(sum(m["train_docs"] for m in manifests)),
      "train_bytes": int(sum(m["train_bytes"] for m in manifests)),
      "val_docs": int(len(eval_order)), "val_bytes": int(np.concatenate(val_bytes)[eval_order].sum()),
      "val_dropped_copies": int(in_train.sum()), "val_dropped_repeats": repeats,
      "replaced_bytes": int(sum(m["replaced_bytes"] for m in manifests)),
      "skipped_files": int(sum(m["skipped_files"] for m in manifests)),
  }
  os.makedirs(os.path.dirname(base), exist_ok=True)
  tmp = {ext: f"{base}.tmp{os.getpid()}{ext}" for ext in (".npz", ".json")}
  try:
    with open(tmp[".npz"], "wb") as f:
      np.savez(f, eval_unit=v_unit[eval_order], eval_doc=v_doc[eval_order], counts=counts)
    with open(tmp[".json"], "w") as f:
      json.dump(index, f, sort_keys=True)
    os.replace(tmp[".npz"], base + ".npz")
    os.replace(tmp[".json"], base + ".json")  # last: the index exists only when whole
  except OSError as e:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
      fail(name, f"the disk filled while writing the cache index {base}.json", "free space or "
           "set data.cache_dir to a bigger disk, then run again: the shards are kept")
    raise
  finally:
    _remove_leftovers(tmp.values())


def _remove_leftovers(paths):
  """Temporary files a write left behind (none after a success: they were renamed into place)."""
  for path in paths:
    if os.path.exists(path):
      os.remove(path)


def describe(src: SourceCache, seconds: float | None = None) -> str:
  i = src.index
  extra = []
  if i["val_dropped_copies"]:
    extra.append(f"{i['val_dropped_copies']} held-out docs dropped as copies of training docs")
  if i["replaced_bytes"]:
    extra.append(f"{i['replaced_bytes']} undecodable bytes replaced")
  if i["skipped_files"]:
    extra.append(f"{i['skipped_files']} binary files skipped")
  took = f" in {seconds:.1f} s" if seconds else ""
  return (f"source '{src.name}': {i['train_docs']:,} train docs, {i['train_bytes'] / 1e6:.2f} MB, "
          f"{i['tokens']:,} tokens ({i['train_bytes'] / max(i['tokens'], 1):.2f} bytes/token), "
          f"{i['val_docs']} held-out docs{took}" + "".join(f"; {e}" for e in extra))
