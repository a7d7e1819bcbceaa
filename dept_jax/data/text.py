"""Real text sources -> tokenizers -> packed, shuffled, resumable streams (config.data.kind='text').

Sources live in config.data.sources, a ConfigDict of name -> source(...) (sorted by name, as
ConfigDict keeps keys), so every field can be overridden from the command line:

  --config.data.sources.prose.weight=2  --config.data.sources.code.path=/data/code/*.py

Tokenizers (WORKDIR/tokenizers/): spec_opt trains one per source (<name>.model, size
data.source_vocab_size); the other variants share global.model (size data.vocab_size), trained on
a sample of all sources weighted like STD's mixture. An existing file is reused; a source's
`tokenizer` (spec_opt) or data.tokenizer (the others) points at a .model of your own.
"""
from __future__ import annotations

import os
import re
import tempfile

import jax
import ml_collections
import numpy as np
from absl import logging

from dept_jax.data import corpus, pipeline, sources, tokenizers
from dept_jax.data.base import DataBundle, temperature_probs
from dept_jax.data.sources import DataError, say


def source(path: str, format: str = "auto", field: str = "text", weight: float = 1.0,
           tokenizer: str = "", split: str = "train", data_dir: str = "",
           max_bytes: int = 0) -> ml_collections.ConfigDict:
  """One source. path: folder, glob, .jsonl/.parquet/text file, tfds name, or built-in name.
  format: auto | text | jsonl | parquet | tfds | builtin. weight scales the source's size in
  STD's temperature sampling and in the global tokenizer's training sample."""
  return ml_collections.ConfigDict(dict(
      path=path, format=format, field=field, weight=float(weight), tokenizer=tokenizer,
      split=split, data_dir=data_dir, max_bytes=int(max_bytes)))


def folder_sources(root: str) -> dict:
  """{name: source} for the subfolders of root (each one source), names made safe for
  --config.data.sources.<name> overrides."""
  root = os.path.expanduser(root)
  if not os.path.isdir(root):
    raise DataError(f"'{root}' is not a folder. Fix: pass a folder whose "
                    "subfolders are the sources, as --config configs/folders.py:/path/to/DIR.")
  subs = sorted(e for e in os.listdir(root)
                if os.path.isdir(os.path.join(root, e)) and not e.startswith("."))
  if not subs:
    raise DataError(f"'{root}' has no subfolders. Fix: put each source's "
                    "files in a subfolder of its own (DIR/<source>/...).")
  return {re.sub(r"\W", "_", s): source(os.path.join(root, s)) for s in subs}


def text_data_config() -> dict:
  """The keys config.data needs for kind='text' (config files add them after base_config())."""
  return dict(
      kind="text",
      sources=ml_collections.ConfigDict(),
      val_fraction=0.05,  # share of each source's documents held out (at least one)
      tokenizer="",  # an existing global .model (std/glob/trim/spec); empty: train one
      tokenizer_train_bytes=1_000_000,  # text sampled to train each tokenizer
      min_count=1,  # trim/spec: a global id belongs to a source if it occurs this often
      cache_dir="",  # built-in corpus cache (default ~/.cache/dept_jax/corpus)
      shard_index=-1, shard_count=-1,  # split windows over loaders (-1: every host reads all)
  )


def add_text_data(config, named_sources: dict) -> ml_collections.ConfigDict:
  """config.data set up for these sources {name: source(...)}, num_sources included."""
  for key, value in text_data_config().items():
    config.data[key] = value
  for name, spec in named_sources.items():
    config.data.sources[name] = spec
  config.data.num_sources = len(named_sources)
  return config


def _shard(d) -> tuple[int, int]:
  """Which windows this host reads. By default every host reads all of them: the trainer builds
  the same global batch everywhere and each host hands over only its devices' rows, which is
  right whichever hosts hold a source's slice. shard_index/shard_count split the windows for a
  loader that feeds only a host's own rows."""
  count = d.get("shard_count", -1)
  count = 1 if count is None or count < 1 else count
  index = d.get("shard_index", -1)
  index = 0 if index is None or index < 0 else index
  return index, count


def _read_all(d):
  """[(name, spec dict, Documents)] in the config's order."""
  out = []
  for name, spec in d.sources.items():
    spec = dict(spec)
    if spec.get("format") == "builtin":
      spec = dict(spec, format="jsonl", field="text",
                  path=corpus.ensure(spec["path"] or name, d.get("cache_dir", "")))
    docs = sources.read_documents(name, spec)
    if docs.replaced_bytes:
      logging.warning("source '%s': %d undecodable bytes replaced by U+FFFD", name,
                      docs.replaced_bytes)
    if docs.skipped_files:
      logging.warning("source '%s': %d binary files skipped", name, docs.skipped_files)
    out.append((name, spec, docs))
  return out


def _tokenizers_once(config, read, tokdir):
  """Process 0 trains missing tokenizers into the shared workdir; the others wait, then load
  them (so hosts never race on the same file or end up with different vocabularies)."""
  if jax.process_count() == 1:
    return _tokenizer_paths(config, read, tokdir)
  from jax.experimental import multihost_utils
  if jax.process_index() == 0:
    out = _tokenizer_paths(config, read, tokdir)
    multihost_utils.sync_global_devices("dept_jax tokenizers written")
    return out
  multihost_utils.sync_global_devices("dept_jax tokenizers written")
  return _tokenizer_paths(config, read, tokdir)


def _tokenizer_paths(config, read, tokdir):
  """{name: SentencePieceProcessor} for every source (spec_opt: its own; else the global one)."""
  d = config.data
  if config.variant == "spec_opt":
    if d.get("tokenizer"):
      raise DataError("config.data.tokenizer is the global tokenizer, and spec_opt has none. Fix: "
                      "set config.data.sources.<name>.tokenizer per source, or clear it.")
    return {name: tokenizers.obtain(
        os.path.join(tokdir, f"{name}.model"), spec.get("tokenizer", ""),
        lambda train=train: tokenizers.sample_lines(train, d.tokenizer_train_bytes),
        d.source_vocab_size, f"source '{name}'", "data.source_vocab_size")
        for name, spec, train in read}, {n: os.path.join(tokdir, f"{n}.model") for n, _, _ in read}
  for name, spec, _ in read:
    if spec.get("tokenizer"):
      raise DataError(f"source '{name}': a per-source tokenizer only applies to variant spec_opt; "
                      f"'{config.variant}' uses one global tokenizer. Fix: set "
                      "config.data.tokenizer instead, or clear the source's tokenizer.")

  def weighted_sample():
    # The global tokenizer sees each source as STD's mixture would: weight*size, tempered.
    sizes = np.asarray([max(1, sum(map(len, t))) * s.get("weight", 1.0) for _, s, t in read])
    probs = temperature_probs(sizes, d.temperature)
    return [ln for (_, _, train), p in zip(read, probs)
            for ln in tokenizers.sample_lines(train, int(p * d.tokenizer_train_bytes))]

  path = os.path.join(tokdir, "global.model")
  sp = tokenizers.obtain(path, d.get("tokenizer", ""), weighted_sample, d.vocab_size,
                         "the run (global tokenizer)", "data.vocab_size")
  return {name: sp for name, _, _ in read}, {"global": path}


EVAL_BYTES_PER_TOKEN = 3  # sizes the eval text: about data.eval_batches batches of tokens


def eval_texts(val_texts, budget_bytes: int, seed: int, min_share: int = 256):
  """[(text, ends_doc)] of held-out text chosen by bytes, before any tokenizer sees it, so every
  variant and tokenizer is scored on exactly the same text (bits per byte compare fairly).

  Held-out documents, in an order drawn from the seed, each get a fair share of the budget (their
  leading part); a short document passes on what it leaves unused."""
  out, remaining = [], budget_bytes
  order = np.random.default_rng([seed, 11]).permutation(len(val_texts))
  for j, i in enumerate(order):
    if remaining <= 0:
      break
    share, used = max(min_share, remaining / (len(order) - j)), 0
    pieces = pipeline.line_chunks(val_texts[i])
    for n, piece in enumerate(pieces):
      nbytes = len(piece.encode("utf-8"))
      if used + nbytes > share:  # this piece ends the document's share: cut it (whole chars)
        cut = piece.encode("utf-8")[:int(share - used)].decode("utf-8", "ignore")
        if cut:
          out.append((cut, True))
          used += len(cut.encode("utf-8"))
        elif out and n:
          out[-1] = (out[-1][0], True)
        break
      out.append((piece, n == len(pieces) - 1))
      used += nbytes
    remaining -= used
  return out


def _eval_chunks(sp, val_texts, budget_bytes, seed):
  """[(tokens, nbytes, ends_doc)]: the eval text (eval_texts) in this tokenizer's ids."""
  chosen = eval_texts(val_texts, budget_bytes, seed)
  encoded = tokenizers.encode(sp, [t for t, _ in chosen])
  return [(toks, len(t.encode("utf-8")), last) for (t, last), toks in zip(chosen, encoded)]


def build(config, workdir: str | None) -> DataBundle:
  d, variant, L = config.data, config.variant, config.seq_len
  if not d.get("sources"):
    raise DataError("config.data.sources is empty. Fix: add sources with "
                    "dept_jax.data.text.source(...) (see configs/folders.py).")
  if workdir is None:
    workdir = tempfile.mkdtemp(prefix="dept_jax_data_")
    logging.warning("no workdir: tokenizers go to %s", workdir)
  tokdir = os.path.join(workdir, "tokenizers")
  index, count = _shard(d)
  read = []
  for name, spec, docs in _read_all(d):
    train, val = sources.split_validation(docs, d.val_fraction, config.seed)
    read.append((name, spec, train))
    spec["_val"] = val
  sps, tok_paths = _tokenizers_once(config, read, tokdir)

  # Every host evaluates the same held-out rows: eval inputs enter jit as host arrays, which JAX
  # takes to be identical on all processes (and eval is small next to training).
  eval_bytes = d.eval_batches * config.batch_size * L * EVAL_BYTES_PER_TOKEN
  raw = []  # per source: (name, spec, stream in tokenizer ids, eval rows/bytes for this host)
  for name, spec, train in read:
    sp = sps[name]
    stream = pipeline.pack_stream(tokenizers.encode(sp, train), sp.eos_id())
    chunks = _eval_chunks(sp, spec["_val"], eval_bytes, config.seed)
    rows, row_bytes = pipeline.eval_rows(chunks, sp.eos_id(), L)
    raw.append((name, spec, stream, (rows, row_bytes)))
    n_bytes = sum(len(t.encode("utf-8")) for t in train)
    say(f"source '{name}': {len(train)} train docs, {n_bytes / 1e6:.2f} MB, {len(stream):,} "
        f"tokens ({n_bytes / max(len(stream), 1):.2f} bytes/token), {len(spec['_val'])} "
        "held-out docs")

  def make(name, spec, stream, ev, vocab, id_map=None, weighted=False):
    n = len(stream) * (spec.get("weight", 1.0) if weighted else 1.0)
    return pipeline.TextStream(name, stream, vocab, L, config.batch_size, config.seed, ev,
                               id_map=id_map, shard=(index, count), train_tokens=n,
                               unk_id=sps[name].unk_id())

  if variant == "spec_opt":
    streams = [make(n, s, st, ev, sps[n].get_piece_size()) for n, s, st, ev in raw]
    return DataBundle(streams=streams, tokenizers=tok_paths)
  G = d.vocab_size
  # STD samples its mixture by train_tokens: a source's weight scales its effective size there.
  global_streams = [make(n, s, st, ev, G, weighted=True) for n, s, st, ev in raw]
  if variant in ("std", "glob"):
    l2g = np.tile(np.arange(G, dtype=np.int32), (len(raw), 1))
    streams = [make(n, s, st, ev, G) for n, s, st, ev in raw]
    return DataBundle(streams, G, l2g, tok_paths, global_streams)
  owned = [owned_ids(st, G, d.min_count, sps[n]) for n, s, st, ev in raw]
  l2g = np.full((len(raw), max(len(o) for o in owned)), -1, np.int32)
  streams = []
  for k, ((n, s, st, ev), ids) in enumerate(zip(raw, owned)):
    l2g[k, :len(ids)] = ids
    streams.append(make(n, s, st, ev, len(ids), id_map=global_to_local(ids, G, sps[n].unk_id())))
    say(f"source '{n}': trimmed vocabulary {len(ids)} of {G} global ids")
  return DataBundle(streams, G, l2g, tok_paths, global_streams)


def owned_ids(stream: np.ndarray, G: int, min_count: int, sp) -> np.ndarray:
  """TRIM/SPEC: sorted global ids occurring >= min_count times, plus <unk> and EOS always."""
  counts = np.bincount(stream, minlength=G)
  ids = set(np.nonzero(counts >= max(1, min_count))[0].tolist()) | {sp.unk_id(), sp.eos_id()}
  return np.asarray(sorted(ids), np.int32)


def global_to_local(owned: np.ndarray, G: int, unk_global: int) -> np.ndarray:
  """[G] local id of each global id; ids the source does not own map to its local <unk>."""
  unk_local = int(np.searchsorted(owned, unk_global))
  m = np.full((G,), unk_local, np.int32)
  m[owned] = np.arange(len(owned), dtype=np.int32)
  return m
