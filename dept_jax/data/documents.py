"""A source's documents, planned as units of work and read one unit at a time (never all at once).

A source is a folder, a glob, one file, or a tensorflow-datasets dataset. Planning lists its files
and cuts them into *units* of about `unit_bytes` (several small files, or a byte range of a big
file cut at a line end): a unit is what one worker tokenizes into one cache shard, and its key
(file paths, sizes, modification times, byte ranges, reader options) says when it must be redone.
Planning reads no text, so it costs the same for 1 GB as for 1 TB.

Documents: a text file is one document, except that a source given as a single file, and any file
bigger than `max_doc_bytes`, is split at blank lines; a JSON line, a Parquet row or a tfds example
is one document. Any document longer than `max_doc_bytes` is cut into pieces at line ends. Bytes
that are not UTF-8 are replaced (U+FFFD) and counted; files with NUL bytes in their first 8 KB are
binary and skipped. Paths go through etils.epath, so gs:// sources work where gcsfs is installed.
"""
from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
import os
import re
from typing import Iterator

from dept_jax.data.base import fail

FORMATS = ("auto", "text", "jsonl", "parquet", "tfds")
DOC_SPLITS = ("auto", "file", "blank_lines")
READER_VERSION = 1  # bump when reading or splitting changes: every unit key changes with it
_BLANK_LINES = re.compile(r"\n[ \t\r]*\n")


@dataclasses.dataclass(frozen=True)
class Part:
  """A piece of one input: bytes [start, stop) of a text/jsonl file, row groups of a Parquet file,
  examples of a tfds split. stamp: size and modification time (or the dataset's version)."""
  path: str
  start: int
  stop: int
  stamp: str


@dataclasses.dataclass(frozen=True)
class Unit:
  source: str  # for messages only: the key ignores it, so two sources share identical inputs
  kind: str  # text | jsonl | parquet | tfds
  parts: tuple
  field: str = "text"
  split: str = "file"  # file | blank_lines (resolved from auto at planning)
  max_doc_bytes: int = 65536
  data_dir: str = ""  # tfds
  tfds_split: str = ""

  def key(self) -> str:
    ident = {"v": READER_VERSION, "kind": self.kind, "field": self.field, "split": self.split,
             "max_doc_bytes": self.max_doc_bytes, "data_dir": self.data_dir, "tfds_split": self.tfds_split,
             "parts": [dataclasses.astuple(p) for p in self.parts]}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]

  @property
  def where(self) -> str:
    first = self.parts[0].path
    return first if len(self.parts) == 1 else f"{first} (+{len(self.parts) - 1} more files)"


# ----------------------------------------------------------------------------- files


def _remote(path: str) -> bool:
  return "://" in path


def _open(path: str):
  if _remote(path):
    from etils import epath
    return epath.Path(path).open("rb")
  return open(path, "rb")


def _stat(name: str, path: str) -> tuple[int, int]:
  """(size, mtime_ns) of a file; an unreadable one fails naming it."""
  try:
    if _remote(path):
      from etils import epath
      st = epath.Path(path).stat()
      return int(st.length), int(getattr(st, "mtime_nsec", 0) or 0)
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns
  except OSError as e:
    fail(name, f"cannot read {path}: {e.strerror or e}", "fix the file's permissions or remove it "
         "(a broken or looping symbolic link counts as unreadable)")


def _stamp(name: str, path: str) -> tuple[int, str]:
  size, mtime = _stat(name, path)
  return size, f"{size}:{mtime}"


def list_files(name: str, path: str) -> list[str]:
  """The source's files, sorted: a glob, every non-hidden file below a folder, or one file."""
  from etils import epath
  path = os.path.expanduser(path)
  if any(ch in path for ch in "*?["):
    root, _, pattern = _split_glob(path)
    files = sorted(str(p) for p in epath.Path(root).glob(pattern) if _is_file(p))
    if not files:
      fail(name, f"the glob '{path}' matches no files",
           "check the pattern, or point path at a folder of text files")
    return files
  p = epath.Path(path)
  if not p.exists():
    fail(name, f"path '{path}' does not exist", f"set config.data.sources.{name}.path to a "
         "folder, glob, .jsonl, .parquet or text file that exists")
  if not p.is_dir():
    return [path]
  files = []
  stack = [p]
  while stack:  # depth-first, sorted; linked folders are not followed (no loops)
    d = stack.pop()
    entries = sorted(d.iterdir(), key=lambda e: e.name, reverse=True)
    for e in entries:
      if e.name.startswith("."):
        continue
      if not _remote(str(e)) and os.path.islink(e) and os.path.isdir(e):
        continue
      if e.is_dir():
        stack.append(e)
      else:
        files.append(str(e))
  return sorted(files)


def _split_glob(path: str):
  """'/a/b/*.txt' -> ('/a/b', '', '*.txt'): the fixed folder and the pattern below it."""
  parts = path.split("/")
  i = next(i for i, s in enumerate(parts) if any(ch in s for ch in "*?["))
  root = "/".join(parts[:i]) or ("/" if path.startswith("/") else ".")
  return root, "", "/".join(parts[i:])


def _is_file(p) -> bool:
  try:
    return p.is_file()
  except OSError:
    return True  # let _stat name the problem


def file_format(path: str, fmt: str) -> str:
  if fmt != "auto":
    return fmt
  low = path.lower()
  if low.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
    return "jsonl"
  if low.endswith(".parquet"):
    return "parquet"
  return "text"


# ----------------------------------------------------------------------------- planning


def plan(name: str, spec: dict, unit_bytes: int = 64 << 20,
         unit_examples: int = 20_000) -> list[Unit]:
  """The source's units of work, in a fixed order. Reads no text."""
  fmt = spec.get("format") or "auto"
  if fmt not in FORMATS:
    fail(name, f"unknown format '{fmt}'", f"use one of {FORMATS}")
  if not spec.get("path"):
    fail(name, "no path given", f"set config.data.sources.{name}.path")
  split = spec.get("split_docs") or "auto"
  if split not in DOC_SPLITS:
    fail(name, f"unknown split_docs '{split}'", f"use one of {DOC_SPLITS}")
  max_doc = int(spec.get("max_doc_bytes") or 65536)
  common = dict(field=spec.get("field") or "text", max_doc_bytes=max_doc)
  if fmt == "tfds":
    return _plan_tfds(name, spec, unit_examples, common)
  files = list_files(name, spec["path"])
  single = len(files) == 1
  units, group, group_bytes, group_kind = [], [], 0, None

  def close_group():
    nonlocal group, group_bytes
    if group:
      units.append(Unit(name, group_kind[0], tuple(group), split=group_kind[1], **common))
    group, group_bytes = [], 0

  for path in files:
    kind = file_format(path, fmt)
    size, stamp = _stamp(name, path)
    if kind == "parquet":
      close_group()
      units += _plan_parquet(name, path, stamp, unit_bytes, common)
      continue
    file_split = split
    if split == "auto":  # a lone file or a big one holds many documents
      file_split = "blank_lines" if (size > max_doc or single) else "file"
    if size >= unit_bytes:  # its own units: byte ranges cut at line ends
      close_group()
      for start, stop in _byte_ranges(name, path, size, unit_bytes):
        units.append(Unit(name, kind, (Part(path, start, stop, stamp),), split=file_split,
                          **common))
      continue
    if group_kind != (kind, file_split):
      close_group()
      group_kind = (kind, file_split)
    group.append(Part(path, 0, size, stamp))
    group_bytes += size
    if group_bytes >= unit_bytes:
      close_group()
  close_group()
  return units


def _byte_ranges(name, path, size, unit_bytes) -> list[tuple[int, int]]:
  """[start, stop) pieces of about unit_bytes, each ending just after a line end where one is
  near (else at a UTF-8 character boundary). Gzip files cannot be cut: one piece."""
  if size <= unit_bytes * 1.5 or path.endswith(".gz"):
    return [(0, size)]
  cuts = [0]
  with _open(path) as f:
    pos = unit_bytes
    while pos < size - unit_bytes // 2:
      f.seek(pos)
      window = f.read(1 << 20)
      nl = window.find(b"\n")
      if nl >= 0:
        cut = pos + nl + 1
      else:  # no line end within 1 MB: cut before a UTF-8 lead byte
        back = 0
        while back < min(4, len(window)) and (window[back] & 0xC0) == 0x80:
          back += 1
        cut = pos + back
      cuts.append(cut)
      pos = cut + unit_bytes
  cuts.append(size)
  return list(zip(cuts[:-1], cuts[1:]))


def _plan_parquet(name, path, stamp, unit_bytes, common) -> list[Unit]:
  import pyarrow.parquet as pq
  try:
    meta = pq.ParquetFile(path).metadata
  except Exception as e:  # pyarrow raises several types for a damaged file
    fail(name, f"{path} is not a readable Parquet file ({type(e).__name__}: {e})",
         "replace or remove the file")
  units, start, acc = [], 0, 0
  for rg in range(meta.num_row_groups):
    acc += meta.row_group(rg).total_byte_size
    if acc >= unit_bytes or rg == meta.num_row_groups - 1:
      units.append(Unit(name, "parquet", (Part(path, start, rg + 1, stamp),), **common))
      start, acc = rg + 1, 0
  return units


def _tfds_source(name, spec):
  import tensorflow_datasets as tfds  # heavy import: only for tfds sources
  kw = {"split": spec.get("split") or "train"}
  if spec.get("data_dir"):
    kw["data_dir"] = os.path.expanduser(spec["data_dir"])
  try:
    return tfds.data_source(spec["path"], **kw)
  except Exception as e:  # tfds raises many types for "not prepared"/"not found"
    fail(name, f"tensorflow-datasets could not open '{spec['path']}' split '{kw['split']}' in "
         f"data_dir '{kw.get('data_dir', '(default)')}': {type(e).__name__}: {e}",
         "prepare the dataset as array_record (file_format='array_record') in that data_dir, "
         "or fix path/split/data_dir")


def _plan_tfds(name, spec, unit_examples, common) -> list[Unit]:
  src = _tfds_source(name, spec)
  n = len(src)
  # The dataset's identity: its size and its files' sizes and times.
  files = sorted(str(p) for p in getattr(src, "paths", None) or [])
  stamp = hashlib.sha256(json.dumps([n, [_stamp(name, f)[1] for f in files]]).encode())
  stamp = stamp.hexdigest()[:16]
  return [Unit(name, "tfds", (Part(spec["path"], i, min(i + unit_examples, n), stamp),),
               data_dir=os.path.expanduser(spec.get("data_dir") or ""),
               tfds_split=spec.get("split") or "train", **common)
          for i in range(0, n, unit_examples)]


# ----------------------------------------------------------------------------- reading


class ReadStats:
  """Decodes bytes as UTF-8, replacing what is not and counting the replaced bytes."""

  def __init__(self):
    self.replaced = 0
    self.skipped_files = 0
    self._name = f"dept_jax_count_{id(self)}"
    codecs.register_error(self._name, self._handle)

  def _handle(self, err):
    self.replaced += err.end - err.start
    return "\ufffd", err.end

  def decode(self, raw: bytes) -> str:
    return raw.decode("utf-8", errors=self._name)


def read_unit(unit: Unit, stats: ReadStats) -> Iterator[str]:
  """The unit's documents in order, each at most max_doc_bytes of UTF-8."""
  reader = {"text": _read_text, "jsonl": _read_jsonl, "parquet": _read_parquet,
            "tfds": _read_tfds}[unit.kind]
  for doc in reader(unit, stats):
    if doc.strip():
      yield from pieces(doc, unit.max_doc_bytes)


def _read_range(unit, part) -> bytes:
  try:
    with _open(part.path) as f:
      f.seek(part.start)
      return f.read(part.stop - part.start)
  except OSError as e:
    fail(unit.source, f"cannot read {part.path}: {e.strerror or e}",
         "fix the file's permissions or remove it")


def _read_text(unit, stats):
  for part in unit.parts:
    raw = _read_range(unit, part)
    if part.start == 0 and b"\0" in raw[:8192]:  # a binary file in a text folder: skip it
      stats.skipped_files += 1
      continue
    text = stats.decode(raw)
    if unit.split == "blank_lines":
      yield from _BLANK_LINES.split(text)
    else:
      yield text


def _read_jsonl(unit, stats):
  for part in unit.parts:
    raw = _read_range(unit, part)
    if part.path.endswith(".gz"):
      import gzip
      raw = gzip.decompress(raw)
    for lineno, line in enumerate(raw.split(b"\n"), 1):
      if not line.strip():
        continue
      where = f"{part.path} line {lineno}" + (f" of bytes {part.start}.." if part.start else "")
      try:
        obj = json.loads(stats.decode(line))
      except json.JSONDecodeError as e:
        fail(unit.source, f"{where} is not valid JSON ({e.msg})",
             "make every line one JSON object")
      if not isinstance(obj, dict) or unit.field not in obj:
        keys = ", ".join(sorted(obj)) if isinstance(obj, dict) else type(obj).__name__
        fail(unit.source, f"{where} has no field '{unit.field}' (has: {keys})",
             f"set config.data.sources.{unit.source}.field to the key that holds the text")
      yield str(obj[unit.field])


def _read_parquet(unit, stats):
  import pyarrow.parquet as pq
  for part in unit.parts:
    pf = pq.ParquetFile(part.path)
    if unit.field not in pf.schema_arrow.names:
      fail(unit.source, f"{part.path} has no column '{unit.field}' (has: "
           f"{', '.join(pf.schema_arrow.names)})",
           f"set config.data.sources.{unit.source}.field to the text column")
    groups = list(range(part.start, part.stop))
    for batch in pf.iter_batches(columns=[unit.field], row_groups=groups, batch_size=1024):
      for v in batch.column(0).to_pylist():
        if v is not None:
          yield v if isinstance(v, str) else stats.decode(bytes(v))


def _read_tfds(unit, stats):
  import numpy as np
  part = unit.parts[0]
  src = _tfds_source(unit.source, {"path": part.path, "split": unit.tfds_split,
                                   "data_dir": unit.data_dir})
  for i in range(part.start, part.stop):
    ex = src[i]
    if unit.field not in ex:
      fail(unit.source, f"tfds example {i} has no feature '{unit.field}' (has: "
           f"{', '.join(sorted(ex))})", f"set config.data.sources.{unit.source}.field to the "
           "text feature")
    v = ex[unit.field]
    yield stats.decode(bytes(v)) if isinstance(v, (bytes, np.bytes_)) else str(v)


def pieces(text: str, max_bytes: int) -> list[str]:
  """text cut into pieces of at most max_bytes of UTF-8, after a line end where one is in the
  second half of a piece, else after a space, else at a character boundary."""
  raw = text.encode("utf-8")
  if len(raw) <= max_bytes:
    return [text]
  out, pos = [], 0
  while len(raw) - pos > max_bytes:
    end = pos + max_bytes
    cut = raw.rfind(b"\n", pos + max_bytes // 2, end)
    if cut < 0:
      cut = raw.rfind(b" ", pos + max_bytes // 2, end)
    if cut >= 0:
      cut += 1
    else:
      cut = end
      while (raw[cut] & 0xC0) == 0x80:  # do not split a character
        cut -= 1
    out.append(raw[pos:cut].decode("utf-8"))
    pos = cut
  out.append(raw[pos:].decode("utf-8"))
  return out
