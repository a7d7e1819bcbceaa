"""sentencepiece tokenizers: trained once into WORKDIR/tokenizers/, reused after, size-checked.

Options chosen for byte-faithful text of any domain: identity normalisation and kept whitespace
(code and headers keep their indentation), '\\n' a piece of its own (sentencepiece trains on lines,
so otherwise a newline would never be learned), byte fallback (no <unk> for unseen characters).
Ids: 0 <unk>, 1 <s>, 2 </s> (the EOS between documents), no padding id (-1 pads).
"""
from __future__ import annotations

import io
import os
import shutil
import time

import numpy as np
import sentencepiece as spm

from dept_jax.data.sources import DataError, say

MIN_VOCAB = 300  # 256 byte pieces + specials + a few real pieces


def sample_lines(texts: list[str], budget_bytes: int) -> list[str]:
  """Non-empty lines of texts, evenly thinned to about budget_bytes (deterministic)."""
  lines = [ln for t in texts for ln in t.split("\n") if ln.strip()]
  total = sum(len(ln) for ln in lines)
  if budget_bytes <= 0 or total <= budget_bytes:
    return lines
  # Keep evenly spaced blocks of 64 lines: spreads the sample over all documents, keeps context.
  blocks = [lines[i:i + 64] for i in range(0, len(lines), 64)]
  n_keep = max(1, int(np.ceil(len(blocks) * budget_bytes / total)))
  picks = np.unique(np.linspace(0, len(blocks) - 1, n_keep).round().astype(int))
  return [ln for b in picks for ln in blocks[b]]


def train(lines: list[str], path: str, vocab_size: int, who: str, threads: int = 2) -> str:
  """Train a unigram model on lines and write it to path (atomically: a crash leaves none)."""
  if vocab_size < MIN_VOCAB:
    raise DataError(f"tokenizer for {who}: vocab size {vocab_size} is below {MIN_VOCAB} "
                    "(256 byte-fallback pieces plus specials). Fix: raise the vocab size.")
  start = time.perf_counter()
  # Scripts with thousands of characters (CJK) need more pieces than the vocabulary has at full
  # coverage; with byte fallback, rarer characters can safely be left to bytes.
  for coverage in (0.9995, 0.995, 0.98, 0.95, 0.9):
    model = io.BytesIO()
    try:
      spm.SentencePieceTrainer.train(
          sentence_iterator=iter(lines), model_writer=model, model_type="unigram",
          vocab_size=vocab_size, byte_fallback=True, normalization_rule_name="identity",
          remove_extra_whitespaces=False, user_defined_symbols=["\n"],
          character_coverage=coverage, max_sentence_length=16384, shuffle_input_sentence=False,
          input_sentence_size=0, num_threads=threads, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
          minloglevel=2)
      break
    except RuntimeError as e:
      if "required_chars" in str(e) and coverage > 0.9:
        continue
      raise DataError(f"tokenizer for {who}: sentencepiece could not train {vocab_size} pieces "
                      f"on {sum(map(len, lines)):,} characters ({e}). Fix: give the source more "
                      "text or lower the vocab size.") from e
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(model.getvalue())
  os.replace(tmp, path)
  say(f"trained tokenizer {path}: {vocab_size} pieces on {sum(map(len, lines)) / 1e6:.2f} M "
      f"characters in {time.perf_counter() - start:.1f} s")
  return path


def load(path: str, expected_size: int, who: str, size_key: str) -> spm.SentencePieceProcessor:
  """Load a .model and check it has the vocabulary size the model config expects."""
  if not os.path.exists(path):
    raise DataError(f"tokenizer for {who}: '{path}' does not exist. Fix: point the tokenizer "
                    "setting at an existing sentencepiece .model, or leave it empty to train one.")
  sp = spm.SentencePieceProcessor(model_file=path)
  if sp.get_piece_size() != expected_size:
    raise DataError(f"tokenizer for {who}: '{path}' has {sp.get_piece_size()} pieces but "
                    f"config.{size_key}={expected_size}. Fix: set {size_key}="
                    f"{sp.get_piece_size()}, or delete '{path}' so a {expected_size}-piece one is "
                    "trained.")
  if sp.eos_id() < 0:
    raise DataError(f"tokenizer for {who}: '{path}' has no EOS piece, which separates documents. "
                    "Fix: use a model trained with eos_id >= 0.")
  return sp


def obtain(path: str, user_model: str, lines_fn, vocab_size: int, who: str,
           size_key: str) -> spm.SentencePieceProcessor:
  """The tokenizer at path: copied from user_model if given, else trained unless already there."""
  if user_model:
    user_model = os.path.expanduser(user_model)
    load(user_model, vocab_size, who, size_key)  # check before copying
    if os.path.abspath(user_model) != os.path.abspath(path):
      os.makedirs(os.path.dirname(path), exist_ok=True)
      shutil.copyfile(user_model, path)
  elif not os.path.exists(path):
    train(lines_fn(), path, vocab_size, who)
  return load(path, vocab_size, who, size_key)


def encode(sp: spm.SentencePieceProcessor, texts: list[str], threads: int = 2) -> list[np.ndarray]:
  """Token ids of each text (sentencepiece's C++ encoder, batched)."""
  if not texts:
    return []
  return [np.asarray(ids, np.int32) for ids in sp.encode(texts, num_threads=threads)]
