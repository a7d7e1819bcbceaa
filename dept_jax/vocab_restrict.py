"""A `tokenizers.Tokenizer` cut down to the pieces one TRIM/SPEC source owns, so its export holds
only ids its table trained on, plus what the tokenizer cannot work without.

New id i is the source's table row i (global id token_ids[i]) for its own pieces. After them, in
global id order, come the pieces it never trained on but the model needs (`restrict` returns the
table row each new id takes: those take the source's unknown-token row, the row its training used
for text it did not own):
  BPE        every base piece (pieces no merge produces: for byte-level BPE the 256 bytes, so any
             text can still be spelled) and every piece a merge builds on the way to a kept piece;
             merges whose parts and result are kept. BPE applies the lowest-ranked applicable
             merge, and on a word whose global pieces are all kept every merge it applies is kept,
             so the restricted tokenizer makes the same choice at every step. The pieces on the way
             matter: a piece that is always merged further never ends a token of the source's text,
             and without it the owned piece above it cannot be built (with owned pieces alone,
             0.1-30% of a source's words changed on byte-level BPEs of the built-in corpus; none
             with them: bench/RESULTS.md).
  Unigram    its unknown piece (the best segmentation of a word over all pieces is still the
             best over a subset that holds it; what the source cannot spell becomes <unk>, as in
             training)
  WordPiece, WordLevel   the unknown token (longest match first, or whole words)
Added tokens keep their settings when their piece is kept; those a post-processor template inserts
are kept.
"""
from __future__ import annotations

import json
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer, models, processors


class ExportError(ValueError):
  """An export that cannot be written as asked; the message says what to change."""


# ----------------------------------------------------------------------------- per model kind


def _merge_pairs(model: dict) -> list[tuple[str, str, str]]:
  """(left, right, result) of every BPE merge, in rank order."""
  prefix = model.get("continuing_subword_prefix") or ""
  out = []
  for m in model["merges"]:
    a, b = m.split(" ", 1) if isinstance(m, str) else m
    tail = b[len(prefix):] if prefix and b.startswith(prefix) else b
    out.append((a, b, a + tail))
  return out


def _bpe_needed(model: dict, kept: set[str], added: set[str]) -> set[str]:
  merges = _merge_pairs(model)
  made_by: dict[str, list[tuple[str, str]]] = {}
  for a, b, ab in merges:
    made_by.setdefault(ab, []).append((a, b))
  base = {p for p in model["vocab"] if p not in made_by and p not in added}
  need = set(kept) | base | ({model["unk_token"]} if model.get("unk_token") else set())
  todo = list(need)
  while todo:  # the parts of every merge that makes a needed piece
    for pair in made_by.get(todo.pop(), ()):
      for p in pair:
        if p not in need:
          need.add(p)
          todo.append(p)
  return need


def _bpe(model: dict, new_id: dict[str, int]):
  merges = [(a, b) for a, b, ab in _merge_pairs(model) if {a, b, ab} <= new_id.keys()]
  keys = ("dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk",
          "byte_fallback", "ignore_merges")
  return models.BPE(vocab=new_id, merges=merges,
                    **{k: model[k] for k in keys if model.get(k) is not None})


def _unigram_needed(model: dict, kept: set[str], added: set[str]) -> set[str]:
  del added
  unk = model.get("unk_id")
  return set(kept) | ({model["vocab"][unk][0]} if unk is not None else set())


def _unigram(model: dict, new_id: dict[str, int]):
  score = dict((p, s) for p, s in model["vocab"])
  floor = min(score.values(), default=0.0) - 1e4  # an added token the model did not hold
  vocab = [(p, score.get(p, floor)) for p in sorted(new_id, key=new_id.get)]
  unk = model.get("unk_id")
  return models.Unigram(vocab, None if unk is None else new_id[model["vocab"][unk][0]],
                        bool(model.get("byte_fallback", False)))


def _unk_needed(model: dict, kept: set[str], added: set[str]) -> set[str]:
  del added
  return set(kept) | ({model["unk_token"]} if model.get("unk_token") else set())


def _wordpiece(model: dict, new_id: dict[str, int]):
  return models.WordPiece(new_id, unk_token=model["unk_token"],
                          max_input_chars_per_word=model["max_input_chars_per_word"],
                          continuing_subword_prefix=model["continuing_subword_prefix"])


def _wordlevel(model: dict, new_id: dict[str, int]):
  return models.WordLevel(new_id, unk_token=model["unk_token"])


# model type -> (pieces needed besides the owned ones, the model rebuilt over new ids)
_MODELS = {"BPE": (_bpe_needed, _bpe), "Unigram": (_unigram_needed, _unigram),
           "WordPiece": (_unk_needed, _wordpiece), "WordLevel": (_unk_needed, _wordlevel)}


# ----------------------------------------------------------------------------- post-processors


def _template_tokens(pp: dict | None) -> set[str]:
  """Pieces a post-processor inserts (a template's special tokens, BERT/RoBERTa's cls and sep)."""
  if not pp:
    return set()
  if pp["type"] == "Sequence":
    return set().union(*map(_template_tokens, pp["processors"]))
  if pp["type"] == "TemplateProcessing":
    return {t for s in pp["special_tokens"].values() for t in s["tokens"]}
  return {pp[k][0] for k in ("cls", "sep") if k in pp}


def _post_processor(pp, state: dict | None, new_id: dict[str, int]):
  """The post-processor with the ids it inserts renumbered (the same object when it has none)."""
  if not state or not _template_tokens(state):
    return pp
  kind = state["type"]
  if kind == "Sequence":
    return processors.Sequence([_post_processor(pp[i], s, new_id)
                                for i, s in enumerate(state["processors"])])
  if kind == "TemplateProcessing":
    def template(items):
      return [f"{x['SpecialToken']['id']}:{x['SpecialToken']['type_id']}" if "SpecialToken" in x
              else f"${x['Sequence']['id']}:{x['Sequence']['type_id']}" for x in items]
    specials = [{"id": k, "ids": [new_id[t] for t in s["tokens"]], "tokens": s["tokens"]}
                for k, s in state["special_tokens"].items()]
    return processors.TemplateProcessing(single=template(state["single"]),
                                         pair=template(state["pair"]), special_tokens=specials)
  sep, cls = ((state[k][0], new_id[state[k][0]]) for k in ("sep", "cls"))
  if kind == "BertProcessing":
    return processors.BertProcessing(sep, cls)
  if kind == "RobertaProcessing":
    return processors.RobertaProcessing(sep, cls, trim_offsets=state["trim_offsets"],
                                        add_prefix_space=state["add_prefix_space"])
  raise ExportError(f"the tokenizer's post-processor {kind} inserts tokens whose ids cannot be "
                    "renumbered. Fix: export a glob/std run of this tokenizer, or use a tokenizer "
                    "whose post-processor is a TemplateProcessing.")


# ----------------------------------------------------------------------------- restrict


def restrict(tok: Tokenizer, token_ids: Sequence[int], unknown_id: int
             ) -> tuple[Tokenizer, np.ndarray]:
  """(the tokenizer over the source's pieces, rows): rows[i] is the table row new id i reads,
  i for the source's own pieces token_ids (its table's order), the row of global id unknown_id for
  the pieces the tokenizer needs that the source never trained on."""
  owned = [int(g) for g in token_ids]
  if unknown_id not in owned:
    raise ExportError(f"the source's pieces must include its unknown-token id {unknown_id}: "
                      "pieces it never trained on take that row")
  state = json.loads(tok.to_str())  # the library's own serialisation of the model's pieces
  model = state["model"]
  if model["type"] not in _MODELS:
    raise ExportError(f"restricting a {model['type']} tokenizer to a source's pieces is not "
                      "supported. Fix: export a glob/std run of it, or train TRIM/SPEC on a BPE, "
                      "Unigram, WordPiece or WordLevel tokenizer (or a sentencepiece .model).")
  needed, build = _MODELS[model["type"]]
  piece = {i: p for p, i in tok.get_vocab(with_added_tokens=True).items()}
  added = tok.get_added_tokens_decoder()
  want = needed(model, {piece[g] for g in owned}, {a.content for a in added.values()})
  want |= _template_tokens(state["post_processor"])
  have = set(owned)
  extra = sorted({tok.token_to_id(p) for p in want} - have - {None})
  ids = owned + extra
  new_id = {piece[g]: i for i, g in enumerate(ids)}
  out = Tokenizer(build(model, new_id))
  out.normalizer, out.pre_tokenizer, out.decoder = tok.normalizer, tok.pre_tokenizer, tok.decoder
  out.post_processor = _post_processor(tok.post_processor, state["post_processor"], new_id)
  out.add_tokens([a for g, a in sorted(added.items()) if a.content in new_id])
  if out.get_vocab_size(with_added_tokens=True) != len(ids):
    raise ExportError(f"the tokenizer's pieces are not one per id ({len(ids)} ids, "
                      f"{len(new_id)} pieces), so its ids cannot follow the table's rows")
  rows = np.concatenate([np.arange(len(owned)), np.full(len(extra), owned.index(unknown_id))])
  return out, rows.astype(np.int64)
