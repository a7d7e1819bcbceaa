"""Real text sources (config.data.kind='text'): read -> tokenize once -> cache -> stream.

Sources live in config.data.sources, a ConfigDict of name -> source(...) (sorted by name, as
ConfigDict keeps keys), so every field can be overridden from the command line:

  --config.data.sources.prose.weight=2  --config.data.sources.code.path=/data/code/*.py

Tokenizers: spec_opt has one per source (size data.source_vocab_size), the other variants share a
global one (size data.vocab_size). Each is, in this order: the run's own copy in WORKDIR/tokenizers/
(a run keeps the vocabulary it started with), the file you name (a sentencepiece .model or a Hugging
Face tokenizer.json: a source's `tokenizer` for spec_opt, data.tokenizer for the others), or a
sentencepiece model trained on a streamed sample of data.tokenizer_train_bytes (the global one:
an equal share from each source, times its weight; never tempered) and kept in the cache.

`prepare` tokenizes every source into the token cache (dept_jax/data/cache.py); `build` does so for
what is missing, then serves windows from the cache and writes the run's record (run_record.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time

import jax
import ml_collections
import numpy as np

from dept_jax import variants
from dept_jax.data import cache as cache_lib
from dept_jax.data import corpus, documents, run_record, tokenizers, windows
from dept_jax.data.base import DataBundle, DataError, SourceData, say

SAMPLE_UNITS = 16  # a tokenizer's sample is spread over this many of a source's units at most
EVAL_BYTES_PER_TOKEN = 3  # sizes the eval text: about data.eval_batches batches of tokens


def source(path: str, format: str = "auto", field: str = "text", weight: float = 1.0,
           tokenizer: str = "", split: str = "train", data_dir: str = "",
           split_docs: str = "auto", max_doc_bytes: int = 65536) -> ml_collections.ConfigDict:
  """One source. path: folder, glob, .jsonl/.parquet/text file, tfds name, or built-in name.
  format: auto | text | jsonl | parquet | tfds | builtin. weight scales the source's size in
  STD's mixture and its share of the global tokenizer's sample. split_docs: auto | file |
  blank_lines (see dept_jax/data/documents.py)."""
  return ml_collections.ConfigDict(dict(
      path=path, format=format, field=field, weight=float(weight), tokenizer=tokenizer,
      split=split, data_dir=data_dir, split_docs=split_docs, max_doc_bytes=int(max_doc_bytes)))


def folder_sources(root: str) -> dict:
  """{name: source} for the subfolders of root (each one source), names made safe for
  --config.data.sources.<name> overrides; two folders that would get one name refuse."""
  root = os.path.expanduser(root).rstrip("/") or "/"
  folder = documents.epath_of(root)  # a local folder, or gs://bucket/DIR where gcsfs is installed
  if not folder.is_dir():
    raise DataError(f"'{root}' is not a folder. Fix: pass a folder whose "
                    "subfolders are the sources, as --config configs/folders.py:/path/to/DIR.")
  subs = sorted(e.name for e in folder.iterdir() if e.is_dir() and not e.name.startswith("."))
  if not subs:
    raise DataError(f"'{root}' has no subfolders. Fix: put each source's "
                    "files in a subfolder of its own (DIR/<source>/...).")
  out, origin = {}, {}
  for s in subs:
    name = re.sub(r"\W", "_", s)
    if name in out:
      raise DataError(f"folders '{origin[name]}' and '{s}' in {root} both become source '{name}' "
                      "(names keep letters, digits and _). Fix: rename one of them.")
    out[name], origin[name] = source(f"{root.rstrip('/')}/{s}"), s
  return out


def text_data_config() -> dict:
  """The keys config.data needs for kind='text' (config files add them after base_config())."""
  return dict(
      kind="text",
      sources=ml_collections.ConfigDict(),
      val_fraction=0.05,  # share of documents held out, chosen by content hash (>= 1 per unit)
      tokenizer="",  # global tokenizer: a .model or tokenizer.json; empty: train one
      eos_token="",  # a tokenizer.json's end-of-document token, if not found by itself
      tokenizer_train_bytes=1_000_000,  # streamed sample each trained tokenizer learns from
      min_count=1,  # trim/spec: a global id belongs to a source if it occurs this often
      cache_dir="",  # token cache, trained tokenizers, built-in corpus (~/.cache/dept_jax)
      unit_mb=64.0,  # MB of text per preparation unit (one worker's job, one cache shard)
      workers=0,  # preparation processes per host (0: every core)
      read_threads=2, prefetch=4,  # grain threads building batches ahead of the device
  )


def check_config(d):
  """The text data keys, checked before anything is read (config_lib.validate calls this)."""
  d = ml_collections.ConfigDict({**text_data_config(), **{k: d[k] for k in d.keys()}})

  def bad(key, problem, fix):
    raise DataError(f"config.data.{key}: {problem}. Fix: {fix}.")
  if not 0 < d.val_fraction < 1:
    bad("val_fraction", f"{d.val_fraction} is not in (0, 1)", "hold out a share such as 0.05")
  if d.unit_mb <= 0:
    bad("unit_mb", f"{d.unit_mb} is not positive", "use e.g. 64 (MB of text per shard)")
  if d.workers < 0:
    bad("workers", f"{d.workers} is negative", "use 0 (every core) or a number of processes")
  if d.tokenizer_train_bytes <= 0:
    bad("tokenizer_train_bytes", f"{d.tokenizer_train_bytes} is not positive",
        "sample e.g. 1000000 bytes (tens of MB for a 50k vocabulary)")
  if d.min_count < 1:
    bad("min_count", f"{d.min_count} is below 1", "use 1 (every id a source uses) or more")
  if d.read_threads < 0 or d.prefetch < 0:
    bad("read_threads", "read_threads and prefetch must be >= 0", "use e.g. 2 and 4")
  for name, spec in d.sources.items():
    if int(spec.get("max_doc_bytes") or 65536) < 1024:
      bad(f"sources.{name}.max_doc_bytes", f"{spec.max_doc_bytes} is below 1024",
          "cut documents into pieces of at least 1024 bytes (default 65536)")


def add_text_data(config, named_sources: dict) -> ml_collections.ConfigDict:
  """config.data set up for these sources {name: source(...)}, num_sources included."""
  for key, value in text_data_config().items():
    config.data[key] = value
  for name, spec in named_sources.items():
    config.data.sources[name] = spec
  config.data.num_sources = len(named_sources)
  return config


def paper_preset_data(config, arg: str, default_variant: str, sources: int, vocab_size: int,
                      source_vocab_size: int, sample_bytes: int = 64 << 20):
  """The data part of a paper preset from its argument VARIANT[,DATA_ROOT[,TOKENIZER]]: one source
  per subfolder of DATA_ROOT (without it, shapes only: --mode=compile and the tests), the given
  tokenizer as the global one, trained tokenizers learning from a streamed sample_bytes. VARIANT
  may be std_tau0 / std_tau1: the STD baseline with its mixture sampled uniformly / by size."""
  from dept_jax.config_lib import set_variant
  variant, _, rest = (arg or default_variant).partition(",")
  root, _, tokenizer = rest.partition(",")
  set_variant(config, variant or default_variant)
  if tokenizer and variants.get(config.variant).vocabulary == "own":
    raise DataError("spec_opt trains one tokenizer per source, so the preset's TOKENIZER argument "
                    "does not apply. Fix: drop it, or set config.data.sources.<name>.tokenizer.")
  config.data.update(num_sources=sources, vocab_size=vocab_size,
                     source_vocab_size=source_vocab_size)
  add_text_data(config, folder_sources(root) if root else {})
  config.data.tokenizer = tokenizer
  config.data.tokenizer_train_bytes = sample_bytes
  if not root:
    config.data.num_sources = sources
  return config


# ----------------------------------------------------------------------------- planning


def _specs(d) -> dict:
  """{name: spec dict}, built-in sources resolved to their cached .jsonl."""
  if not d.get("sources"):
    raise DataError("config.data.sources is empty. Fix: add sources with "
                    "dept_jax.data.text.source(...) (see configs/folders.py).")
  out = {}
  for name, spec in d.sources.items():
    spec = dict(spec)
    if spec.get("format") == "builtin":
      spec = dict(spec, format="jsonl", field="text",
                  path=corpus.ensure(spec["path"] or name, d.get("cache_dir", "")))
    out[name] = spec
  return out


def _plan(d, specs) -> dict:
  unit_bytes = int(d.get("unit_mb", 64) * (1 << 20))
  return {name: documents.plan(name, spec, unit_bytes) for name, spec in specs.items()}


# ----------------------------------------------------------------------------- tokenizers


def _sample(units, budget: int) -> list[str]:
  """About budget bytes of lines from up to SAMPLE_UNITS units spread over the source, each unit
  thinned evenly to its share (so the sample is not just the first files)."""
  picks = sorted(set(np.linspace(0, len(units) - 1, min(len(units), SAMPLE_UNITS))
                     .round().astype(int).tolist()))
  lines, total = [], 0
  for i, u in enumerate(picks):
    share = (budget - total) // (len(picks) - i)
    size = sum(p.stop - p.start for p in units[u].parts) if units[u].kind != "tfds" else 0
    fraction = min(1.0, 1.2 * share / size) if size else 1.0  # 1.2: blank and cut lines
    # Blocks of 1/16 of the share: some 16-20 blocks per unit, however long its lines.
    got, n = tokenizers.sample_lines(documents.read_unit(units[u], documents.ReadStats()), share,
                                     fraction, block_bytes=max(4096, share // 16))
    lines += got
    total += n
  return lines


def _trained(root: str, who: str, plans: list, shares: list, vocab_size: int) -> str:
  """A sentencepiece model trained on the shares of these sources' units, kept in the cache under
  a key of its sample and settings, so every run on the same data reuses it. A checksum written
  beside it catches a damaged copy, which is then trained again (training is deterministic)."""
  ident = json.dumps({"v": 1, "vocab": vocab_size, "shares": shares,
                      "units": [[u.key() for u in units] for units in plans]}, sort_keys=True)
  key = hashlib.sha256(ident.encode()).hexdigest()[:32]
  path = os.path.join(cache_lib.cache_root(root), "tokenizers", f"{key}.model")
  check = path + ".sha256"
  if os.path.exists(path) and os.path.exists(check):
    if open(check).read().strip() == tokenizers.file_fingerprint(path):
      return path
    say(f"the cached tokenizer {path} does not match its checksum; training it again")
  lines = []
  for units, share in zip(plans, shares):
    lines += _sample(units, share)
  tokenizers.train_sentencepiece(lines, path, vocab_size, who)
  with open(check + ".tmp", "w") as f:
    f.write(tokenizers.file_fingerprint(path))
  os.replace(check + ".tmp", check)
  return path


def _tokenizer(tokdir, file_stem, user_path, train_fn, eos_token, size: tuple[int, str]):
  """The run's copy if it has one; else the user's file or a trained one, copied into the run.
  size: (configured vocabulary size, its key), which a trained copy must have."""
  copies = [os.path.join(tokdir, file_stem + ext) for ext in (".model", ".json")] if tokdir else []
  for copy in (c for c in copies if os.path.exists(c)):
    tok = tokenizers.load(copy, eos_token)
    if user_path and tokenizers.file_fingerprint(os.path.expanduser(user_path)) != tok.fingerprint:
      raise DataError(f"{copy} is not the tokenizer {user_path} that the config names: this "
                      "workdir was started with another. Fix: pass a new --workdir, or point the "
                      f"tokenizer setting at {copy}.")
    if not user_path and tok.vocab_size != size[0]:
      raise DataError(f"{copy} has {tok.vocab_size} pieces but config.{size[1]}={size[0]}: this "
                      "workdir was started with other settings. Fix: pass a new --workdir, or set "
                      f"{size[1]}={tok.vocab_size}.")
    return tok
  path = os.path.expanduser(user_path) if user_path else train_fn()
  tok = tokenizers.load(path, eos_token)  # checks the file before it enters the run
  if not tokdir:
    return tok
  ext = ".json" if tok.kind == "hf" else ".model"
  dest = os.path.join(tokdir, file_stem + ext)
  os.makedirs(tokdir, exist_ok=True)
  shutil.copyfile(path, dest + ".tmp")
  os.replace(dest + ".tmp", dest)
  return tokenizers.load(dest, eos_token)


def _tokenizers(config, plans, tokdir) -> dict:
  """{source name: Tokenizer}."""
  d, names = config.data, list(plans)
  root, eos = d.get("cache_dir", ""), d.get("eos_token", "")
  budget = int(d.tokenizer_train_bytes)
  if variants.get(config.variant).vocabulary == "own":
    if d.get("tokenizer"):
      raise DataError("config.data.tokenizer is the global tokenizer, and spec_opt has none. Fix: "
                      "set config.data.sources.<name>.tokenizer per source, or clear it.")
    return {n: _tokenizer(tokdir, n, d.sources[n].get("tokenizer", ""),
                          lambda n=n: _trained(root, f"source '{n}'", [plans[n]], [budget],
                                               d.source_vocab_size), eos,
                          (d.source_vocab_size, "data.source_vocab_size"))
            for n in names}
  for n in names:
    if d.sources[n].get("tokenizer"):
      raise DataError(f"source '{n}': a per-source tokenizer only applies to variant spec_opt; "
                      f"'{config.variant}' uses one global tokenizer. Fix: set "
                      "config.data.tokenizer instead, or clear the source's tokenizer.")
  weights = np.asarray([float(d.sources[n].get("weight", 1.0)) for n in names])
  shares = [int(budget * w / weights.sum()) for w in weights]
  tok = _tokenizer(tokdir, "global", d.get("tokenizer", ""),
                   lambda: _trained(root, "the global vocabulary", [plans[n] for n in names],
                                    shares, d.vocab_size), eos, (d.vocab_size, "data.vocab_size"))
  return {n: tok for n in names}


# ----------------------------------------------------------------------------- prepare


def _sync(tag: str):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(tag)


def prepare(config, workdir: str | None = None, verify: bool = False) -> dict:
  """Tokenize every source into the token cache (what is there already is kept; with verify, its
  checksums are checked first). Every host prepares its share of the units; process 0 trains the
  tokenizers and writes each source's index. Returns {name: cache.SourceCache}."""
  d = config.data
  specs = _specs(d)
  plans = _plan(d, specs)
  tokdir = os.path.join(workdir, "tokenizers") if workdir else None
  if jax.process_index() == 0:
    toks = _tokenizers(config, plans, tokdir)
  _sync("dept_jax tokenizers")
  if jax.process_index() != 0:
    toks = _tokenizers(config, plans, tokdir)
  root = d.get("cache_dir", "")
  caches = {}
  for n in plans:  # one TokenCache per distinct tokenizer
    caches[n] = next((c for m, c in caches.items() if toks[m].fingerprint == toks[n].fingerprint),
                     None) or cache_lib.TokenCache(root, toks[n], d.val_fraction)
  mine = [(u, caches[n]) for n, units in plans.items() for u in units]
  mine = mine[jax.process_index()::jax.process_count()]
  workers = int(d.get("workers", 0)) or os.cpu_count() or 1
  start = time.perf_counter()
  done = cache_lib.prepare_units(mine, root, workers, verify)
  if done:  # every host reports its own share
    host = f"host {jax.process_index()}/{jax.process_count()}: " if jax.process_count() > 1 else ""
    mb = sum(m["train_bytes"] + m["val_bytes"] for _, m in done) / 1e6
    secs = time.perf_counter() - start
    for n in plans:
      got = sum(u.source == n for u, _ in done)
      if got:
        print(f"[dept_jax] {host}source '{n}': tokenized {got} of {len(plans[n])} units",
              flush=True)
    print(f"[dept_jax] {host}prepared {len(done)} units ({mb:.1f} MB of text) in {secs:.1f} s "
          f"with {min(workers, len(done))} worker(s): {mb / secs:.2f} MB/s", flush=True)
  _sync("dept_jax units prepared")
  out = {}
  if jax.process_index() == 0:
    out = {n: cache_lib.open_source(n, plans[n], caches[n]) for n in plans}
  _sync("dept_jax sources indexed")
  if jax.process_index() != 0:
    out = {n: cache_lib.open_source(n, plans[n], caches[n]) for n in plans}
  for n, src in out.items():
    if src.index["val_dropped_copies"]:
      say(f"source '{n}': dropped {src.index['val_dropped_copies']} held-out documents that have "
          "a copy in training")
  return out


# ----------------------------------------------------------------------------- build


def build(config, workdir: str | None, training: bool = True) -> DataBundle:
  """Training: prepare what is missing, then serve windows from the cache; the first start writes
  the run's record, and a resumed run must see the same data (run_record.check). Otherwise (eval,
  export, generate): everything from the run's record, no data read."""
  variant, L, d = config.variant, config.seq_len, config.data
  record = run_record.load(workdir)
  if not training:
    if record is None:
      raise DataError(f"{workdir} has no data record (WORKDIR/data/record.json), which a text run "
                      "writes when it starts. Fix: pass the --workdir of a training run.")
    names = record["names"]
    toks = {n: run_record.tokenizer(workdir, record, n, d.get("eos_token", "")) for n in names}
    vocab = dict(record["vocab"], **({"owned": record["owned"]} if "owned" in record else {}))
    return _bundle(config, names, toks, {n: record["sources"][n]["train_tokens"] for n in names},
                   None, {n: run_record.eval_rows(workdir, n) for n in names}, vocab)
  srcs = prepare(config, workdir)
  for src in srcs.values():
    say(cache_lib.describe(src))
  names = list(srcs)
  toks = {n: srcs[n].cache.tok for n in names}
  if record:  # a resumed run: the same documents, and the held-out rows it started with
    run_record.check(record, srcs, toks, workdir)
    rows = {n: run_record.eval_rows(workdir, n) for n in names}
  else:
    budget = d.eval_batches * config.batch_size * L * EVAL_BYTES_PER_TOKEN
    rows = {n: windows.eval_rows(srcs[n].eval_documents(budget), toks[n].eos_id, L, budget)
            for n in names}
  tw = {n: windows.TokenWindows(srcs[n].shards(), L, n, toks[n].vocab_size) for n in names}
  for n in names:
    if len(tw[n]) < config.batch_size:
      raise DataError(f"source '{n}': has {len(tw[n])} training windows of seq_len+1={L + 1} "
                      f"tokens, fewer than one batch (batch_size={config.batch_size}). Fix: add "
                      "text to this source, or lower batch_size or seq_len.")
  vocab = vocabulary(variant, names, toks, srcs, d.get("min_count", 1), record)
  bundle = _bundle(config, names, toks, {n: srcs[n].train_tokens for n in names}, tw, rows, vocab)
  if workdir and not record and jax.process_index() == 0:
    run_record.write(workdir, names, toks, srcs, vocab, rows)
  return bundle


def vocabulary(variant, names, toks, srcs, min_count, record=None) -> dict:
  """{'kind', 'sizes': real rows of each source's table, 'global_size'} and, for trim/spec,
  'owned': each source's owned global ids (local id i is global id owned[i]): the ids its training
  tokens use at least min_count times, plus <unk> (or EOS without one) and EOS. A resumed run
  keeps the ones it recorded."""
  kind = variants.get(variant).vocabulary
  if kind == "own":
    return {"kind": kind, "sizes": [toks[n].vocab_size for n in names]}
  G = toks[names[0]].vocab_size
  if kind == "global":
    return {"kind": kind, "sizes": [G] * len(names), "global_size": G}
  owned = {}
  for n in names:
    if record:
      owned[n] = np.asarray(record["owned"][n], np.int32)
      continue
    tok = toks[n]
    ids = set(np.nonzero(srcs[n].counts >= max(1, min_count))[0].tolist())
    ids |= {tok.unknown_id, tok.eos_id}
    owned[n] = np.asarray(sorted(ids), np.int32)
  return {"kind": kind, "sizes": [len(owned[n]) for n in names], "global_size": G,
          "owned": owned}


def id_map(owned: np.ndarray, G: int, unk_global: int) -> np.ndarray:
  """[G] local id of each global id; ids the source does not own map to its local <unk>."""
  unk_local = int(np.searchsorted(owned, unk_global))
  m = np.full((G,), unk_local, np.int32)
  m[owned] = np.arange(len(owned), dtype=np.int32)
  return m


def _bundle(config, names, toks, train_tokens, tw, rows, vocab) -> DataBundle:
  """The run's DataBundle; tw (the training windows) is None outside training."""
  B, seed, kind = config.batch_size, config.seed, vocab["kind"]
  d = config.data
  weight = {n: float(d.sources[n].get("weight", 1.0)) for n in names}
  sources, global_windows, global_eval = [], [], []
  for k, n in enumerate(names):
    m, unk = None, None
    if kind == "trimmed":
      unk = toks[n].unknown_id
      m = id_map(vocab["owned"][n], vocab["global_size"], unk)
    train = tw and windows.training_windows(tw[n], seed, n, m)
    sources.append(SourceData(n, train, vocab["sizes"][k], int(train_tokens[n]),
                              windows.eval_batches(*rows[n], B, m, unk), weight[n]))
    if kind != "own":
      global_windows.append(tw and windows.training_windows(tw[n], seed, n))
      global_eval.append(windows.eval_batches(*rows[n], B))
  paths = {n: toks[n].path for n in names}
  if kind == "own":
    return DataBundle(sources, tokenizers=paths)
  G = vocab["global_size"]
  if kind == "global":
    l2g = np.tile(np.arange(G, dtype=np.int32), (len(names), 1))
  else:
    l2g = np.full((len(names), max(vocab["sizes"])), -1, np.int32)
    for k, n in enumerate(names):
      l2g[k, :vocab["sizes"][k]] = vocab["owned"][n]
      if tw:
        say(f"source '{n}': trimmed vocabulary {vocab['sizes'][k]} of {G} global ids")
  return DataBundle(sources, G, l2g, paths, global_windows, global_eval)
