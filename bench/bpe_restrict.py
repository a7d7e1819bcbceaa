"""What restricting a byte-level BPE tokenizer to one source's pieces keeps, measured.

A TRIM/SPEC export carries the global tokenizer cut down to the pieces the source owns (the ids its
training text uses). For a BPE model the cut needs, besides the owned pieces, every byte and every
piece a merge builds on the way to an owned one (dept_jax/vocab_restrict.py). This trains a
GPT-NeoX-style byte-level BPE (NFC, ByteLevel pre-tokenizer and decoder, <|endoftext|>) on the
built-in corpus, gives each source the ids of its training documents (90% of them), and reports per
source: owned pieces, the bytes and on-the-way pieces added, how many of its words (those whose
global pieces it owns) the restricted tokenizer splits differently from the global one on training
and held-out documents, with the cut used (`vocab_restrict.restrict`) and with only owned pieces
plus bytes (merges with owned parts and result), and how long the cut takes.

  python bench/bpe_restrict.py --vocab 4096,32768   # -> bench/results/bpe_restrict.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tokenizers import (Tokenizer, decoders, models, normalizers, pre_tokenizers,  # noqa: E402
                        processors, trainers)

from dept_jax import vocab_restrict  # noqa: E402
from dept_jax.data import corpus  # noqa: E402

EOS = "<|endoftext|>"


def documents(name: str, cap: int) -> list[str]:
  docs, n = [], 0
  with open(corpus.ensure(name), encoding="utf-8") as f:
    for line in f:
      docs.append(json.loads(line)["text"])
      n += len(docs[-1].encode("utf-8"))
      if n >= cap:
        break
  return docs


def neox_like(texts, vocab: int) -> Tokenizer:
  tok = Tokenizer(models.BPE())
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.post_processor = processors.ByteLevel(trim_offsets=True)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=vocab, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False))
  return tok


def owned_only(glob: Tokenizer, owned: list[int]) -> Tokenizer:
  """The cut without on-the-way pieces: owned pieces, the bytes, merges with owned parts/result."""
  model = json.loads(glob.to_str())["model"]
  made = {ab for _, _, ab in vocab_restrict._merge_pairs(model)}
  keep = {glob.id_to_token(g) for g in owned} | {p for p in model["vocab"] if p not in made}
  new_id = {p: i for i, p in enumerate(sorted(keep, key=glob.token_to_id))}
  tok = Tokenizer(vocab_restrict._bpe(model, new_id))
  tok.normalizer, tok.pre_tokenizer, tok.decoder = glob.normalizer, glob.pre_tokenizer, glob.decoder
  return tok


def words_split_differently(glob: Tokenizer, cut: Tokenizer, owned: set[int], docs) -> tuple:
  """(words whose global pieces are owned, of them split differently by cut)."""
  n = changed = 0
  for doc in docs:
    for word, _ in glob.pre_tokenizer.pre_tokenize_str(glob.normalizer.normalize_str(doc)):
      pieces = glob.model.tokenize(word)
      if all(t.id in owned for t in pieces):
        n += 1
        changed += [t.value for t in cut.model.tokenize(word)] != [t.value for t in pieces]
  return n, changed


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--vocab", default="4096,32768")
  ap.add_argument("--mb", type=float, default=1.0, help="MB of each source's documents")
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                "bpe_restrict.json"))
  args = ap.parse_args()
  names = corpus.available()
  docs = {n: documents(n, int(args.mb * 1e6)) for n in names}
  results = []
  for vocab in (int(v) for v in args.vocab.split(",")):
    start = time.perf_counter()
    glob = neox_like([d for n in names for d in docs[n]], vocab)
    print(f"vocab {vocab}: trained in {time.perf_counter() - start:.1f} s", flush=True)
    bytes_ = set(pre_tokenizers.ByteLevel.alphabet())
    for n in names:
      cut_at = len(docs[n]) * 9 // 10
      train, held = docs[n][:cut_at], docs[n][cut_at:]
      owned = sorted({i for e in glob.encode_batch(train) for i in e.ids} | {glob.token_to_id(EOS)})
      start = time.perf_counter()
      cut, rows = vocab_restrict.restrict(glob, owned, glob.token_to_id(EOS))
      seconds = time.perf_counter() - start
      extra = [cut.id_to_token(i) for i in range(len(owned), len(rows))]
      naive = owned_only(glob, owned)
      row = {"vocab": vocab, "source": n, "owned": len(owned), "bytes_added": sum(
          p in bytes_ for p in extra), "on_the_way_added": sum(p not in bytes_ for p in extra),
          "restrict_s": round(seconds, 3)}
      for split, texts in (("train", train), ("held", held)):
        words, changed = words_split_differently(glob, cut, set(owned), texts)
        _, naive_changed = words_split_differently(glob, naive, set(owned), texts)
        row.update({f"{split}_words": words, f"{split}_changed": changed,
                    f"{split}_changed_owned_only": naive_changed})
      print(row, flush=True)
      results.append(row)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
