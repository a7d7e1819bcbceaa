"""The one file checksum: checkpoint manifests, token cache shards and tokenizer fingerprints."""
from __future__ import annotations

import hashlib


def sha256_of(path: str, chunk_bytes: int = 1 << 22) -> str:
  """Hex sha256 of a file's bytes, read in chunks (shards and checkpoints can be GBs)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(chunk_bytes), b""):
      h.update(chunk)
  return h.hexdigest()
