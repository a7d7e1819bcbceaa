"""What a run keeps of its data, so that it means the same thing forever after.

Written once, when a text run starts (WORKDIR/data/):
  record.json    the sources in order, each one's token-cache key and training tokens, and the
                 vocabulary (kind, sizes, the global size); the tokenizers are in WORKDIR/tokenizers/
  vocab.npz      TRIM/SPEC: each source's owned global ids, in local id order
  eval_<n>.npz   each source's held-out rows and the UTF-8 bytes they cover
Evaluation, export and generation read only these (the data folder may be gone or changed), and a
resumed training run refuses a source whose files changed since the run started.
"""
from __future__ import annotations

import json
import os

import numpy as np

from dept_jax.data.base import DataError

RECORD_VERSION = 1


def _dir(workdir: str) -> str:
  return os.path.join(workdir, "data")


def load(workdir: str | None) -> dict | None:
  path = os.path.join(_dir(workdir), "record.json") if workdir else ""
  if not path or not os.path.exists(path):
    return None
  with open(path) as f:
    record = json.load(f)
  vocab = os.path.join(_dir(workdir), "vocab.npz")
  if os.path.exists(vocab):
    with np.load(vocab) as z:
      record["owned"] = {n: z[n] for n in z.files}
  return record


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
      "sources": {n: {"cache_key": srcs[n].key, "train_tokens": srcs[n].train_tokens,
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
  with np.load(os.path.join(_dir(workdir), f"eval_{name}.npz")) as z:
    return z["rows"], z["bytes"]


def check(record: dict, srcs: dict, workdir: str):
  """A resumed run's sources must be the ones it started with."""
  if list(srcs) != record["names"]:
    raise DataError(f"the sources are now {', '.join(srcs)}, but the run in {workdir} started with "
                    f"{', '.join(record['names'])}. Fix: resume with the same sources, or train in "
                    "a new workdir.")
  changed = [n for n, src in srcs.items() if src.key != record["sources"][n]["cache_key"]]
  if changed:
    raise DataError(f"source(s) {', '.join(changed)} changed since the run in {workdir} started "
                    "(their files or tokenizer differ). Fix: restore the files, or train on the new "
                    "data in a new workdir (this run's eval, export and generate still work: they "
                    "read its own record in WORKDIR/data).")
