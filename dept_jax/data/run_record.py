"""What a run keeps of its data, so that it means the same thing forever after.

Written once, when a text run starts (WORKDIR/data/):
  record.json    the sources in order, each one's token-cache key and training tokens, and the
                 vocabulary (kind, sizes, the global size); the tokenizers are in WORKDIR/tokenizers/
  vocab.npz      TRIM/SPEC: each source's owned global ids, in local id order
  eval_<n>.npz   each source's held-out rows and the UTF-8 bytes they cover
Evaluation, export and generation read only these (the data folder may be gone or changed), and a
resumed training run refuses a source whose documents changed since the run started (moved,
copied or touched files with the same documents are the same data).
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from dept_jax.data.base import DataError

RECORD_VERSION = 1


def _dir(workdir: str) -> str:
  return os.path.join(workdir, "data")


def _damaged(path: str, e: Exception):
  raise DataError(f"the run's data record {path} is damaged ({type(e).__name__}: {e}). Fix: "
                  "restore it from a copy of the workdir, or train in a new workdir.") from None


def load(workdir: str | None) -> dict | None:
  path = os.path.join(_dir(workdir), "record.json") if workdir else ""
  if not path or not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      record = json.load(f)
    vocab = os.path.join(_dir(workdir), "vocab.npz")
    if os.path.exists(vocab):
      path = vocab
      with np.load(vocab) as z:
        record["owned"] = {n: z[n] for n in z.files}
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
    _damaged(path, e)
  return record


def tokenizer(workdir: str, record: dict, name: str, eos_token: str = ""):
  """Source name's tokenizer as the run keeps it in WORKDIR/tokenizers/, checked against the
  fingerprint recorded when the run started."""
  from dept_jax.data import tokenizers
  entry = record["sources"][name]
  path = os.path.join(workdir, "tokenizers", entry["tokenizer"])
  if not os.path.exists(path):
    raise DataError(f"the run's tokenizer {path} is missing. Fix: restore it (its sha256 starts "
                    f"{entry['tokenizer_fingerprint']}); without it the run's ids mean nothing.")
  tok = tokenizers.load(path, eos_token)
  if tok.fingerprint != entry["tokenizer_fingerprint"]:
    raise DataError(f"the run's tokenizer {path} is not the one it trained with (sha256 "
                    f"{tok.fingerprint}, recorded {entry['tokenizer_fingerprint']}). Fix: restore "
                    "the original file.")
  return tok


def write(workdir: str, names, toks, srcs, vocab: dict, rows: dict):
  """Atomically (the record last): a killed start leaves no half record."""
  d = _dir(workdir)
  os.makedirs(d, exist_ok=True)
  for n in names:
    _save_npz(os.path.join(d, f"eval_{n}.npz"), rows=rows[n][0], bytes=rows[n][1])
  if "owned" in vocab:
    _save_npz(os.path.join(d, "vocab.npz"), **vocab["owned"])
  record = {
      "version": RECORD_VERSION, "names": list(names),
      "sources": {n: {"content_sha256": srcs[n].index["content_sha256"],
                      "units": [[u["first"], u["where"], u["content_sha256"]]
                                for u in srcs[n].index["units"]],
                      "train_tokens": srcs[n].train_tokens,
                      "tokenizer": os.path.basename(toks[n].path),
                      "tokenizer_fingerprint": toks[n].fingerprint} for n in names},
      "vocab": {k: v for k, v in vocab.items() if k != "owned"},
  }
  tmp = os.path.join(d, "record.json.tmp")
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1)
  os.replace(tmp, os.path.join(d, "record.json"))


def _save_npz(path, **arrays):
  with open(path + ".tmp", "wb") as f:
    np.savez(f, **arrays)
  os.replace(path + ".tmp", path)


def eval_rows(workdir: str, name: str):
  path = os.path.join(_dir(workdir), f"eval_{name}.npz")
  try:
    with np.load(path) as z:
      return z["rows"], z["bytes"]
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
    _damaged(path, e)


def check(record: dict, srcs: dict, toks: dict, workdir: str):
  """A resumed run's sources, documents and tokenizers must be the ones it started with."""
  if list(srcs) != record["names"]:
    raise DataError(f"the sources are now {', '.join(srcs)}, but the run in {workdir} started with "
                    f"{', '.join(record['names'])}. Fix: resume with the same sources, or train in "
                    "a new workdir.")
  for n, src in srcs.items():
    entry = record["sources"][n]
    if toks[n].fingerprint != entry["tokenizer_fingerprint"]:
      raise DataError(f"source '{n}': its tokenizer is not the one the run in {workdir} started "
                      f"with (WORKDIR/tokenizers/{entry['tokenizer']}). Fix: restore that file.")
    if src.index["content_sha256"] == entry["content_sha256"]:
      continue
    before = {first: (where, h) for first, where, h in entry["units"]}
    now = {u["first"]: (u["where"], u["content_sha256"]) for u in src.index["units"]}
    changed = sorted({now.get(f, before.get(f))[0] for f in set(before) | set(now)
                      if before.get(f, (0, 0))[1] != now.get(f, (0, 0))[1]})
    raise DataError(f"source '{n}' changed since the run in {workdir} started: "
                    f"{len(changed)} input(s) differ, e.g. {', '.join(changed[:3])}. Fix: restore "
                    "the files, or train on the new data in a new workdir (this run's eval, export "
                    "and generate still work: they read its own record in WORKDIR/data).")
