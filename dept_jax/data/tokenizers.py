"""Tokenizers: sentencepiece `.model` files (trained here or brought) and Hugging Face
`tokenizer.json` files (through the `tokenizers` library), behind one small interface.

Trained sentencepiece models use options chosen for byte-faithful text of any domain: unigram,
identity normalisation, kept whitespace (code keeps its indentation), '\\n' a piece of its own
(sentencepiece trains on lines, so otherwise a newline would never be learned), byte fallback (no
<unk> for unseen characters). Ids: 0 <unk>, 1 <s>, 2 </s> (the EOS between documents).

A tokenizer's identity is the sha256 of its file: the token cache is keyed by it, so a changed
tokenizer is never served a cache written by another.
"""
from __future__ import annotations

import io
import json
import os
import time
from typing import Iterable

import numpy as np

from dept_jax.data.base import DataError, say
from dept_jax.file_hash import sha256_of

MIN_VOCAB = 300  # 256 byte pieces + specials + a few real pieces
MAX_LINE_BYTES = 16000  # sentencepiece drops sample lines over max_sentence_length (16384 bytes)
HF_EOS_CANDIDATES = ("</s>", "<|endoftext|>", "<eos>", "<|end_of_text|>", "<|eot_id|>")


def file_fingerprint(path: str) -> str:
  return sha256_of(path)[:32]


class Tokenizer:
  """path, kind ('sentencepiece' | 'hf'), fingerprint, vocab_size, eos_id, unk_id (None when the
  tokenizer has no unknown token, e.g. byte-level BPE)."""
  kind = ""

  def __init__(self, path: str):
    self.path = path
    self.fingerprint = file_fingerprint(path)

  def encode(self, texts: list[str], threads: int = 1) -> list[np.ndarray]:
    raise NotImplementedError

  def encode_with_ends(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, end byte offset of each token in the text's UTF-8), ends non-decreasing."""
    raise NotImplementedError

  def decode(self, ids) -> str:
    raise NotImplementedError

  @property
  def unknown_id(self) -> int:
    """Where TRIM/SPEC send ids a source does not own: <unk>, or EOS for tokenizers without one."""
    return self.unk_id if self.unk_id is not None else self.eos_id

  def describe(self) -> dict:
    return {"path": os.path.basename(self.path), "kind": self.kind, "vocab_size": self.vocab_size,
            "eos_id": self.eos_id, "unk_id": self.unk_id, "fingerprint": self.fingerprint}


class SentencePieceTokenizer(Tokenizer):
  kind = "sentencepiece"

  def __init__(self, path: str):
    import sentencepiece as spm
    super().__init__(path)
    try:
      self.sp = spm.SentencePieceProcessor(model_file=path)
    except (RuntimeError, OSError) as e:
      raise DataError(f"tokenizer '{path}' is not a sentencepiece model ({e}). Fix: point at a "
                      ".model file, or a Hugging Face tokenizer.json.") from e
    self.vocab_size = self.sp.get_piece_size()
    self.eos_id = self.sp.eos_id()
    self.unk_id = self.sp.unk_id() if self.sp.unk_id() >= 0 else None
    if self.eos_id < 0:
      raise DataError(f"tokenizer '{path}' has no EOS piece, which separates documents. Fix: use "
                      "a model trained with eos_id >= 0.")

  def encode(self, texts, threads=1):
    if not texts:
      return []
    return [np.asarray(ids, np.int32) for ids in self.sp.encode(texts, num_threads=threads)]

  def encode_with_ends(self, texts):
    out = []
    for text in texts:
      proto = self.sp.encode(text, return_type="proto")
      ids = np.asarray([p.id for p in proto.pieces], np.int32)
      ends = np.maximum.accumulate(np.asarray([p.end for p in proto.pieces] or [0], np.int64))
      out.append((ids, ends[:len(ids)]))
    return out

  def decode(self, ids):
    return self.sp.decode([int(i) for i in ids])


class HFTokenizer(Tokenizer):
  """A Hugging Face tokenizer.json. EOS: `eos_token` if given, else the eos_token of a
  tokenizer_config.json beside it, else the first of HF_EOS_CANDIDATES in its vocabulary."""
  kind = "hf"

  def __init__(self, path: str, eos_token: str = ""):
    from tokenizers import Tokenizer as HFTok
    super().__init__(path)
    try:
      self.tok = HFTok.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception for a bad file
      raise DataError(f"tokenizer '{path}' is not a Hugging Face tokenizer.json ({e}). Fix: point "
                      "at a tokenizer.json or a sentencepiece .model.") from e
    self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
    eos = eos_token or _config_eos(path)
    candidates = [eos] if eos else list(HF_EOS_CANDIDATES)
    ids = [self.tok.token_to_id(t) for t in candidates]
    found = [(t, i) for t, i in zip(candidates, ids) if i is not None]
    if not found:
      raise DataError(f"tokenizer '{path}': no end-of-document token found (looked for "
                      f"{', '.join(candidates)}). Fix: set config.data.eos_token to the token "
                      "that ends a document.")
    self.eos_token, self.eos_id = found[0]
    unk = getattr(self.tok.model, "unk_token", None)
    self.unk_id = self.tok.token_to_id(unk) if unk else None

  def encode(self, texts, threads=1):
    return [np.asarray(e.ids, np.int32)
            for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

  def encode_with_ends(self, texts):
    out = []
    for text, enc in zip(texts, self.tok.encode_batch(list(texts), add_special_tokens=False)):
      # Offsets count characters; turn them into UTF-8 byte offsets.
      char_bytes = np.fromiter((len(ch.encode("utf-8")) for ch in text), np.int64, len(text))
      byte_at = np.concatenate([[0], np.cumsum(char_bytes)])
      ends = np.asarray([byte_at[min(e, len(text))] for _, e in enc.offsets] or [0], np.int64)
      out.append((np.asarray(enc.ids, np.int32), np.maximum.accumulate(ends)[:len(enc.ids)]))
    return out

  def decode(self, ids):
    return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)


def _config_eos(path: str) -> str:
  cfg = os.path.join(os.path.dirname(path), "tokenizer_config.json")
  if not os.path.exists(cfg):
    return ""
  with open(cfg) as f:
    eos = json.load(f).get("eos_token") or ""
  return eos.get("content", "") if isinstance(eos, dict) else str(eos)


def load(path: str, eos_token: str = "") -> Tokenizer:
  """A .model file is sentencepiece; a .json file is a Hugging Face tokenizer."""
  path = os.path.expanduser(path)
  if "://" in path:  # sentencepiece and tokenizers read local files only
    raise DataError(f"tokenizer '{path}' is not a local file. Fix: copy it to a local disk "
                    "(e.g. gsutil cp) and point the tokenizer setting at the copy; the run keeps "
                    "its own copy in WORKDIR/tokenizers/ from then on.")
  if not os.path.exists(path):
    raise DataError(f"tokenizer '{path}' does not exist. Fix: point the tokenizer setting at a "
                    "sentencepiece .model or a Hugging Face tokenizer.json, or leave it empty to "
                    "train one.")
  if path.endswith(".json"):
    return HFTokenizer(path, eos_token)
  return SentencePieceTokenizer(path)


# ----------------------------------------------------------------------------- training


def sample_lines(docs: Iterable[str], budget_bytes: int, fraction: float = 1.0,
                 block_bytes: int = 1 << 16) -> tuple[list[str], int]:
  """Non-empty lines of docs until budget_bytes of UTF-8, keeping an evenly spread `fraction` of
  the text: whole blocks of block_bytes, so the sample covers the text and keeps some context,
  however long its lines. Lines longer than sentencepiece takes are cut into pieces first, so a
  one-line file is sampled, not dropped. Returns (lines, bytes)."""
  from dept_jax.data.documents import pieces
  lines, total, seen = [], 0, 0
  for doc in docs:
    for line in doc.split("\n"):
      if not line.strip():
        continue
      for piece in pieces(line, MAX_LINE_BYTES):
        n = len(piece.encode("utf-8"))
        b, seen = seen // block_bytes, seen + n
        if int((b + 1) * fraction + 0.5) == int(b * fraction + 0.5):  # not a sampled block
          continue
        lines.append(piece)
        total += n
        if total >= budget_bytes:
          return lines, total
  return lines, total


def train_sentencepiece(lines: list[str], path: str, vocab_size: int, who: str,
                        threads: int | None = None) -> str:
  """Train a unigram model on lines and write it to path (atomically: a crash leaves none)."""
  import sentencepiece as spm
  if vocab_size < MIN_VOCAB:
    raise DataError(f"tokenizer for {who}: vocab size {vocab_size} is below {MIN_VOCAB} "
                    "(256 byte-fallback pieces plus specials). Fix: raise the vocab size.")
  n_bytes = sum(len(ln.encode("utf-8")) for ln in lines)
  if not n_bytes:
    raise DataError(f"tokenizer for {who}: its sources gave no text to learn from. Fix: point the "
                    "source(s) at files that hold UTF-8 text (or the right field/column).")
  start = time.perf_counter()
  # Scripts with thousands of characters (CJK) need more pieces than the vocabulary has at full
  # coverage; with byte fallback, rarer characters can safely be left to bytes.
  for coverage in (0.9995, 0.995, 0.98):  # sentencepiece refuses less than 0.98
    model = io.BytesIO()
    try:
      spm.SentencePieceTrainer.train(
          sentence_iterator=iter(lines), model_writer=model, model_type="unigram",
          vocab_size=vocab_size, byte_fallback=True, normalization_rule_name="identity",
          remove_extra_whitespaces=False, user_defined_symbols=["\n"],
          character_coverage=coverage, max_sentence_length=16384, shuffle_input_sentence=False,
          input_sentence_size=0, num_threads=threads or os.cpu_count() or 1, unk_id=0, bos_id=1,
          eos_id=2, pad_id=-1, minloglevel=2)
      break
    except RuntimeError as e:
      if "required_chars" in str(e) and coverage > 0.98:
        continue
      msg = str(e).split("] ")[-1].strip() or str(e)
      fix = ("raise the vocab size (a script with thousands of characters needs more pieces)"
             if "required_chars" in msg else "raise data.tokenizer_train_bytes (a 50k vocabulary "
             "needs tens of MB), give the source more text, or lower the vocab size")
      raise DataError(f"tokenizer for {who}: sentencepiece could not train {vocab_size} pieces "
                      f"on a {n_bytes / 1e6:.2f} MB sample ({msg}). Fix: {fix}.") from e
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(model.getvalue())
  os.replace(tmp, path)
  say(f"trained tokenizer for {who}: {vocab_size} pieces on a {n_bytes / 1e6:.2f} MB sample "
      f"({len(lines):,} lines) in {time.perf_counter() - start:.1f} s")
  return path
