"""A source's documents, planned as units of work and read one unit at a time (never all at once).

A source is a folder, a glob, one file, or a tensorflow-datasets dataset. Planning lists its files
and cuts them into *units* of about `unit_bytes` (several small files, or a byte range of a big
file cut at a line end): a unit is what one worker tokenizes into one cache shard, and its key
(file paths, sizes, modification times, byte ranges, reader options) says when it must be redone.
Planning reads no text, so it costs the same for 1 GB as for 1 TB.

Documents: a text file is one document, except that a source given as a single file, and any file
of unit_bytes or more (a corpus, not a document), is split at blank lines; a JSON line, a Parquet
row or a tfds example is one document. Any document longer than `max_doc_bytes` is cut into pieces
at line ends. Bytes that are not UTF-8 are replaced (U+FFFD) and counted; files with NUL bytes in
their first 8 KB are binary and skipped; `.gz` files are read decompressed. Paths go through
etils.epath, so gs:// sources work where gcsfs is installed.
"""
from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
import os
import re
import stat
from typing import Iterator

from dept_jax.data.base import DataError, fail

FORMATS = ("auto", "text", "jsonl", "parquet", "tfds")
DOC_SPLITS = ("auto", "file", "blank_lines")
READER_VERSION = 2  # bump when reading or splitting changes: every unit key changes with it
_BLANK_LINES = re.compile(r"\n[ \t\r]*\n")


@dataclasses.dataclass(frozen=True)
class Part:
  """A piece of one input: bytes [start, stop) of a text/jsonl file, row groups of a Parquet file,
  examples of a tfds split. stamp: size and modification time (or the dataset's version).
  split: how a text part becomes documents (file: one document; blank_lines)."""
  path: str
  start: int
  stop: int
  stamp: str
  split: str = "file"


@dataclasses.dataclass(frozen=True)
class Unit:
  source: str  # for messages only: the key ignores it, so two sources share identical inputs
  kind: str  # text | jsonl | parquet | tfds
  parts: tuple
  field: str = "text"
  max_doc_bytes: int = 65536
  data_dir: str = ""  # tfds
  tfds_split: str = ""
  holds_out_one: bool = False  # the source's first unit holds out a document if none falls out

  def key(self) -> str:
    ident = {"v": READER_VERSION, "kind": self.kind, "field": self.field,
             "max_doc_bytes": self.max_doc_bytes, "data_dir": self.data_dir,
             "tfds_split": self.tfds_split, "holds_out_one": self.holds_out_one,
             "parts": [dataclasses.astuple(p) for p in self.parts]}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]

  @property
  def where(self) -> str:
    """The unit's inputs in words: a file, a byte range of one, or a run of files."""
    first, last = self.parts[0], self.parts[-1]
    if len(self.parts) > 1:
      return f"{first.path} .. {last.path} ({len(self.parts)} files)"
    whole = self.kind not in ("text", "jsonl") or (
        first.start == 0 and str(first.stop) == first.stamp.split(":")[0])
    return first.path if whole else f"{first.path} (bytes {first.start}..{first.stop})"

  @property
  def first(self) -> str:
    """Where the unit starts: stays the same when files are added or changed inside it."""
    return f"{self.parts[0].path}@{self.parts[0].start}"


# ----------------------------------------------------------------------------- files


def _remote(path: str) -> bool:
  return "://" in path


def epath_of(path: str):
  """etils.epath's Path; a gs:// path needs gcsfs (or TensorFlow) behind it."""
  from etils import epath
  try:
    return epath.Path(path)
  except ImportError as e:
    raise DataError(f"reading {path} needs a file system package that is not installed ({e}). "
                    "Fix: pip install 'dept_jax[gcs]' (gcsfs, for gs://), or copy the data to a "
                    "local disk.") from e


def _open(path: str):
  return epath_of(path).open("rb") if _remote(path) else open(path, "rb")


# What an object store reports per object that changes whenever the object is written again
# (gcsfs: generation; s3fs: VersionId/ETag; adlfs: etag), then its times: the first one present
# goes into the cache key, so a rewrite of equal size is prepared again.
_OBJECT_VERSION_KEYS = ("generation", "VersionId", "version_id", "etag", "ETag", "md5Hash",
                        "crc32c", "mtime", "LastModified", "last_modified", "updated", "created")


def _remote_stat(name: str, path: str) -> tuple[int, str]:
  """(size, version) of an object, through the fsspec file system etils.epath uses for it."""
  try:
    import fsspec
    fs, _ = fsspec.core.url_to_fs(path)
    info = fs.info(path)
  except ImportError as e:
    raise DataError(f"source '{name}': reading {path} needs a file system package that is not "
                    f"installed ({e}). Fix: pip install 'dept_jax[gcs]' (gcsfs, for gs://), or "
                    "copy the data to a local disk.") from e
  except OSError as e:
    fail(name, f"cannot read {path}: {e.strerror or e}", "check the path and your credentials")
  version = next((str(info[k]) for k in _OBJECT_VERSION_KEYS if info.get(k) not in (None, "")),
                 "unversioned")
  return int(info["size"]), version


def _stat(name: str, path: str) -> tuple[int, int | str]:
  """(size, mtime_ns or an object's version) of a file; an unreadable one fails naming it."""
  if _remote(path):
    return _remote_stat(name, path)
  try:
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):  # a pipe or device would block or never end
      fail(name, f"{path} is not a regular file", "remove it from the source's folder, or point "
           "the source at regular files")
    return st.st_size, st.st_mtime_ns
  except OSError as e:
    fail(name, f"cannot read {path}: {e.strerror or e}", "fix the file's permissions or remove it "
         "(a broken or looping symbolic link counts as unreadable)")


def _stamp(name: str, path: str) -> tuple[int, str]:
  size, mtime = _stat(name, path)
  return size, f"{size}:{mtime}"


def list_files(name: str, path: str) -> list[str]:
  """The source's files, sorted: every non-hidden regular file below a folder, one file, or a
  glob (a path that exists is taken as it is, even with glob characters in its name)."""
  path = os.path.expanduser(path)
  p = epath_of(path)
  if not p.exists() and any(ch in path for ch in "*?["):
    root, _, pattern = _split_glob(path)
    files = sorted(str(f) for f in epath_of(root).glob(pattern) if _is_file(f))
    if not files:
      fail(name, f"the glob '{path}' matches no files",
           "check the pattern, or point path at a folder of text files")
    return files
  if not p.exists():
    fail(name, f"path '{path}' does not exist", f"set config.data.sources.{name}.path to a "
         "folder, glob, .jsonl, .parquet or text file that exists")
  if not p.is_dir():
    return [path]
  files, stack, skipped = [], [p], 0
  while stack:  # depth-first, sorted; linked folders are not followed (no loops)
    d = stack.pop()
    for e in sorted(d.iterdir(), key=lambda e: e.name, reverse=True):
      local = not _remote(str(e))
      if e.name.startswith(".") or (local and os.path.islink(e) and os.path.isdir(e)):
        continue
      if e.is_dir():
        stack.append(e)
      elif local and os.path.exists(e) and not os.path.isfile(e):
        skipped += 1  # a pipe, socket or device: reading it could block forever
      else:
        files.append(str(e))
  if not files:
    fail(name, f"the folder '{path}' holds no files" + (f" ({skipped} special files skipped)"
                                                        if skipped else ""),
         "put the source's text, .jsonl or .parquet files in it")
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
  if low.endswith((".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")):
    return "jsonl"  # a .json file is one JSON document (package.json ...): read as text
  if low.endswith(".parquet"):
    return "parquet"
  return "text"


# ----------------------------------------------------------------------------- planning


def plan(name: str, spec: dict, unit_bytes: int = 64 << 20,
         unit_examples: int = 20_000) -> list[Unit]:
  """The source's units of work, in a fixed order. Reads no text."""
  units = _plan(name, spec, unit_bytes, unit_examples)
  if units:  # so that every source holds out at least one document
    units[0] = dataclasses.replace(units[0], holds_out_one=True)
  return units


def _plan(name, spec, unit_bytes, unit_examples) -> list[Unit]:
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
      units.append(Unit(name, group_kind, tuple(group), **common))
    group, group_bytes = [], 0

  for path in files:
    kind = file_format(path, fmt)
    size, stamp = _stamp(name, path)
    if kind == "parquet":
      close_group()
      units += _plan_parquet(name, path, stamp, unit_bytes, common)
      continue
    part_split = split
    if split == "auto":  # a lone file, or one of a unit's size, is a corpus of many documents
      part_split = "blank_lines" if (single or size >= unit_bytes) else "file"
    if size >= unit_bytes:  # its own units: byte ranges cut at line ends
      close_group()
      for start, stop in _byte_ranges(path, size, unit_bytes, whole_lines=kind == "jsonl"):
        units.append(Unit(name, kind, (Part(path, start, stop, stamp, part_split),), **common))
      continue
    if group_kind != kind:
      close_group()
      group_kind = kind
    group.append(Part(path, 0, size, stamp, part_split))
    group_bytes += size
    if group_bytes >= unit_bytes:
      close_group()
  close_group()
  return units


def _byte_ranges(path, size, unit_bytes, whole_lines: bool) -> list[tuple[int, int]]:
  """[start, stop) pieces of about unit_bytes, each ending just after a line end. A text file
  with no line end within 1 MB of a cut is cut before a UTF-8 lead byte instead; JSON Lines are
  always cut at a line end. Gzip files cannot be cut: one piece."""
  if size <= unit_bytes * 1.5 or path.endswith(".gz"):
    return [(0, size)]
  cuts = [0]
  with _open(path) as f:
    pos = unit_bytes
    while pos < size - unit_bytes // 2:
      f.seek(pos)
      window, cut = f.read(1 << 20), None
      while cut is None:
        nl = window.find(b"\n")
        if nl >= 0:
          cut = pos + nl + 1
        elif not whole_lines or not window:  # text: cut before a UTF-8 lead byte
          back = 0
          while back < min(4, len(window)) and (window[back] & 0xC0) == 0x80:
            back += 1
          cut = pos + back if window else size
        else:  # a JSON line longer than 1 MB: read on to its end
          pos += len(window)
          window = f.read(1 << 20)
      if cut >= size:
        break
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
  """The part's bytes: decompressed for .gz, without a UTF-8 byte order mark."""
  try:
    with _open(part.path) as f:
      f.seek(part.start)
      raw = f.read(part.stop - part.start)
  except OSError as e:
    fail(unit.source, f"cannot read {part.path}: {e.strerror or e}",
         "fix the file's permissions or remove it")
  if part.path.endswith(".gz"):
    import gzip
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
      fail(unit.source, f"{part.path} is not a readable gzip file ({e})",
           "replace or remove the file")
  return raw[3:] if part.start == 0 and raw.startswith(b"\xef\xbb\xbf") else raw


def _read_text(unit, stats):
  for part in unit.parts:
    raw = _read_range(unit, part)
    if part.start == 0 and b"\0" in raw[:8192]:  # a binary file in a text folder: skip it
      stats.skipped_files += 1
      continue
    text = stats.decode(raw)
    if part.split == "blank_lines":
      yield from _BLANK_LINES.split(text)
    else:
      yield text


def _read_jsonl(unit, stats):
  for part in unit.parts:
    raw, offset = _read_range(unit, part), 0
    for lineno, line in enumerate(raw.split(b"\n"), 1):
      at, offset = offset, offset + len(line) + 1
      if not line.strip():
        continue
      # A line number where the part starts the file, else where the line starts in the file.
      where = (f"{part.path} line {lineno}" if part.start == 0 else
               f"{part.path} (the line at byte {part.start + at})")
      try:
        obj = json.loads(stats.decode(line))
      except json.JSONDecodeError as e:
        fail(unit.source, f"{where} is not valid JSON ({e.msg})",
             "make every line one JSON object (or set config.data.sources."
             f"{unit.source}.format=text to read the file as plain text)")
      if not isinstance(obj, dict) or unit.field not in obj:
        keys = ", ".join(sorted(obj)) if isinstance(obj, dict) else type(obj).__name__
        fail(unit.source, f"{where} has no field '{unit.field}' (has: {keys})",
             f"set config.data.sources.{unit.source}.field to the key that holds the text")
      value = obj[unit.field]
      if value is None:  # no text in this record
        continue
      if not isinstance(value, str):
        fail(unit.source, f"{where}: field '{unit.field}' holds a {type(value).__name__}, not "
             "text", f"set config.data.sources.{unit.source}.field to a field holding strings")
      yield value


def _read_parquet(unit, stats):
  import pyarrow as pa
  import pyarrow.parquet as pq
  for part in unit.parts:
    pf = pq.ParquetFile(part.path)
    if unit.field not in pf.schema_arrow.names:
      fail(unit.source, f"{part.path} has no column '{unit.field}' (has: "
           f"{', '.join(pf.schema_arrow.names)})",
           f"set config.data.sources.{unit.source}.field to the text column")
    kind = pf.schema_arrow.field(unit.field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or
            pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
      fail(unit.source, f"{part.path} column '{unit.field}' holds {kind}, not text",
           f"set config.data.sources.{unit.source}.field to a string column")
    groups = list(range(part.start, part.stop))
    for batch in pf.iter_batches(columns=[unit.field], row_groups=groups, batch_size=1024):
      for v in batch.column(0).to_pylist():
        if v is not None:  # a null row holds no text
          yield v if isinstance(v, str) else stats.decode(v)


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
