"""Reading a source's documents: text files (folder, glob or file), JSON Lines, Parquet, or a
tensorflow-datasets dataset read without TensorFlow (array_record through `tfds.data_source`).

A document is one text file, one JSON line, one Parquet row or one tfds example; validation is
held out by whole documents. Bytes that are not UTF-8 are replaced (U+FFFD) and counted.
"""
from __future__ import annotations

import codecs
import dataclasses
import glob as globlib
import json
import os
import zlib

import numpy as np

from dept_jax.config_lib import ConfigError

FORMATS = ("auto", "text", "jsonl", "parquet", "tfds")


class DataError(ConfigError):
  """Input that cannot become a source; the message names the source and the fix."""


def say(msg: str):
  """A console line, as the trainer prints them (first host only)."""
  import jax
  if jax.process_index() == 0:
    print(f"[dept_jax] {msg}", flush=True)


def fail(name: str, problem: str, fix: str):
  raise DataError(f"source '{name}': {problem}. Fix: {fix}.")


@dataclasses.dataclass
class Documents:
  name: str
  texts: list[str]
  replaced_bytes: int = 0  # undecodable bytes replaced by U+FFFD
  skipped_files: int = 0  # binary files (NUL bytes) in a text folder

  @property
  def n_bytes(self) -> int:
    return sum(len(t.encode("utf-8")) for t in self.texts)


class _Counter:
  """Decodes bytes as UTF-8, replacing what is not and counting the replaced bytes."""

  def __init__(self):
    self.replaced = 0
    self._name = f"dept_jax_count_{id(self)}"
    codecs.register_error(self._name, self._handle)

  def _handle(self, err):
    self.replaced += err.end - err.start
    return "\ufffd", err.end

  def decode(self, raw: bytes) -> str:
    return raw.decode("utf-8", errors=self._name)


def _ext_format(path: str) -> str:
  low = path.lower()
  if low.endswith((".jsonl", ".json", ".jsonl.gz")):
    return "jsonl"
  if low.endswith(".parquet"):
    return "parquet"
  return "text"


def _list_files(name: str, path: str) -> list[str]:
  if any(ch in path for ch in "*?["):
    files = [p for p in globlib.glob(os.path.expanduser(path), recursive=True) if os.path.isfile(p)]
    if not files:
      fail(name, f"the glob '{path}' matches no files", "check the pattern, or point path at a "
           "folder of text files")
    return sorted(files)
  path = os.path.expanduser(path)
  if not os.path.exists(path):
    fail(name, f"path '{path}' does not exist", f"set config.data.sources.{name}.path to a folder, "
         "glob, .jsonl, .parquet or text file that exists")
  if os.path.isfile(path):
    return [path]
  files = []
  for root, dirs, names in os.walk(path):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    files += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
  return sorted(files)


def _read_jsonl(name, path, field, counter, out, budget):
  opener = open
  if path.endswith(".gz"):
    import gzip
    opener = gzip.open
  with opener(path, "rb") as f:
    for lineno, raw in enumerate(f, 1):
      if not raw.strip():
        continue
      try:
        obj = json.loads(counter.decode(raw))
      except json.JSONDecodeError as e:
        fail(name, f"{path} line {lineno} is not valid JSON ({e.msg})",
             "make every line one JSON object")
      if not isinstance(obj, dict) or field not in obj:
        keys = ", ".join(sorted(obj)) if isinstance(obj, dict) else type(obj).__name__
        fail(name, f"{path} line {lineno} has no field '{field}' (has: {keys})",
             f"set config.data.sources.{name}.field to the key that holds the text")
      if not budget(out, str(obj[field])):
        return


def _read_parquet(name, path, field, counter, out, budget):
  import pyarrow.parquet as pq
  pf = pq.ParquetFile(path)
  if field not in pf.schema_arrow.names:
    fail(name, f"{path} has no column '{field}' (has: {', '.join(pf.schema_arrow.names)})",
         f"set config.data.sources.{name}.field to the text column")
  for batch in pf.iter_batches(columns=[field], batch_size=1024):
    for text in batch.column(0).to_pylist():
      if text is not None and not budget(out, text if isinstance(text, str) else
                                          counter.decode(bytes(text))):
        return


def _read_tfds(name, spec, counter, out, budget):
  import tensorflow_datasets as tfds  # heavy import: only for tfds sources
  kw = {"split": spec.get("split") or "train"}
  if spec.get("data_dir"):
    kw["data_dir"] = os.path.expanduser(spec["data_dir"])
  try:
    src = tfds.data_source(spec["path"], **kw)
  except Exception as e:  # tfds raises many types for "not prepared"/"not found"
    fail(name, f"tensorflow-datasets could not open '{spec['path']}' split '{kw['split']}' "
         f"in data_dir '{kw.get('data_dir', '(default)')}': {type(e).__name__}: {e}",
         "prepare the dataset as array_record (file_format='array_record') in that data_dir, "
         "or fix path/split/data_dir")
  field = spec.get("field") or "text"
  for i in range(len(src)):
    ex = src[i]
    if field not in ex:
      fail(name, f"tfds example {i} has no feature '{field}' (has: {', '.join(sorted(ex))})",
           f"set config.data.sources.{name}.field to the text feature")
    v = ex[field]
    text = counter.decode(v) if isinstance(v, (bytes, np.bytes_)) else str(v)
    if not budget(out, text):
      return


def read_documents(name: str, spec) -> Documents:
  """All documents of one source, in a deterministic order, capped at spec['max_bytes'] if > 0."""
  fmt = spec.get("format") or "auto"
  if fmt not in FORMATS:
    fail(name, f"unknown format '{fmt}'", f"use one of {FORMATS}")
  if not spec.get("path"):
    fail(name, "no path given", f"set config.data.sources.{name}.path")
  field = spec.get("field") or "text"
  max_bytes = int(spec.get("max_bytes") or 0)
  counter, out, seen = _Counter(), [], [0]

  def budget(docs, text) -> bool:  # False once the cap is reached: stop reading
    if text.strip():
      docs.append(text)
      seen[0] += len(text)  # characters: a cheap stand-in for bytes, good enough for a cap
    return not (max_bytes and seen[0] >= max_bytes)

  skipped = 0
  if fmt == "tfds":
    _read_tfds(name, spec, counter, out, budget)
  else:
    for path in _list_files(name, spec["path"]):
      kind = _ext_format(path) if fmt == "auto" else fmt
      if kind == "jsonl":
        _read_jsonl(name, path, field, counter, out, budget)
      elif kind == "parquet":
        _read_parquet(name, path, field, counter, out, budget)
      else:
        with open(path, "rb") as f:
          raw = f.read()
        if b"\0" in raw[:8192]:  # a binary file in a text folder: skip, do not feed it
          skipped += 1
          continue
        if not budget(out, counter.decode(raw)):
          break
      if max_bytes and seen[0] >= max_bytes:
        break
  if not out:
    fail(name, f"no text found in '{spec['path']}'" + (f" ({skipped} binary files skipped)"
                                                        if skipped else ""),
         "point the source at files that hold UTF-8 text (or the right field/column)")
  return Documents(name, out, counter.replaced, skipped)


def split_validation(docs: Documents, fraction: float, seed: int, min_docs: int = 1):
  """(train_texts, val_texts): whole documents held out, the same ones for the same seed."""
  n = len(docs.texts)
  if n < 2:
    fail(docs.name, "has 1 document, and validation is held out by whole documents",
         "give it at least 2 documents (e.g. split the text into several files)")
  n_val = min(n - 1, max(min_docs, int(round(fraction * n))))
  # The name enters the seed, so sources with equal sizes do not hold out the same positions.
  rng = np.random.default_rng([seed, zlib.crc32(docs.name.encode())])
  order = rng.permutation(n)
  val = set(order[:n_val].tolist())
  return ([t for i, t in enumerate(docs.texts) if i not in val],
          [docs.texts[i] for i in sorted(val)])
