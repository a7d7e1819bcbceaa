"""Made-up text for the data tests: small 'languages' that differ in alphabet and shape, so
per-source tokenizers have something to specialise on. Nothing third-party, nothing downloaded."""
import os

import numpy as np

SYLLABLES = {
    "latin": ["ka", "lo", "mi", "ne", "ru", "ta", "shi", "po", "be", "da", "go", "fu", "ve", "zo"],
    "cyrillic": ["ка", "ло", "ми", "не", "ру", "та", "шу", "по", "бе", "да", "го", "жи", "цы"],
    "greek": ["κα", "λο", "μι", "νε", "ρυ", "τα", "πο", "βε", "δα", "γο", "φυ", "ζω"],
    "code": ["x_", "if", "(", ")", "=", "+", "0x", "ff", ";", "{", "}", "ret", "int", "[i]"],
}


def make_docs(kind: str, n_docs: int, words_per_doc: int, seed: int = 0) -> list[str]:
  rng = np.random.default_rng([seed, len(kind)])
  syl = SYLLABLES[kind]
  lexicon = ["".join(rng.choice(syl, size=rng.integers(1, 4))) for _ in range(200)]
  zipf = 1.0 / np.arange(1, len(lexicon) + 1)
  zipf /= zipf.sum()
  docs = []
  for _ in range(n_docs):
    words = rng.choice(lexicon, size=words_per_doc, p=zipf)
    lines = [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)]
    docs.append("\n".join(lines) + "\n")
  return docs


def write_tree(root: str, kinds=("latin", "cyrillic", "code"), n_docs=12, words=1500) -> str:
  """root/<kind>/docNN.txt for each kind."""
  for kind in kinds:
    os.makedirs(os.path.join(root, kind), exist_ok=True)
    for i, doc in enumerate(make_docs(kind, n_docs, words)):
      with open(os.path.join(root, kind, f"doc{i:02d}.txt"), "w", encoding="utf-8") as f:
        f.write(doc)
  return root


def write_hf_tokenizer(path: str, texts, vocab_size: int = 400) -> str:
  """A byte-level BPE tokenizer.json trained here with the `tokenizers` library (as GPT-NeoX's
  is built), with <|endoftext|> as its end-of-document token."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(list(texts), trainer)
  tok.save(path)
  return path
