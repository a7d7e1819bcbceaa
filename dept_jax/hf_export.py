"""Export one source's model (shared body + that source's embedding + its tokenizer) to a Hugging Face
folder that `transformers` loads with no extra code:

    AutoModelForCausalLM.from_pretrained(out_dir)   # LlamaForCausalLM
    AutoTokenizer.from_pretrained(out_dir)          # same ids as the sentencepiece model

Torch-free: weights go through `safetensors.numpy`, the tokenizer is written as a `tokenizer.json`
(built here from the sentencepiece model proto, without the `tokenizers` library) next to the
original `tokenizer.model`. A TRIM/SPEC source's export keeps only the pieces its table covers
(`restrict_vocab`: tokenizer.json alone, ids = the table's rows).

Tokenizer parity. transformers 5's `LlamaTokenizer` rebuilds a BPE tokenizer with Metaspace and no
normalisation whatever the `.model` holds, which is wrong for a unigram model and for sentencepiece's
default `nmt_nfkc` normalisation and whitespace cleanup. So the export writes a `tokenizer.json` that
spells out sentencepiece's own pipeline and declares the generic `PreTrainedTokenizerFast`
(= `TokenizersBackend` in transformers 5), which loads that file as is:
  normalizer  Precompiled(the model's charsmap)              (sentencepiece's NFKC-style rules)
              Strip + Replace(" {2,}" -> " ")                (remove_extra_whitespaces)
              Prepend("▁")                                   (add_dummy_prefix)
              Replace(" " -> "▁")                            (escape_whitespaces)
  model       Unigram(pieces, scores) or BPE(pieces, merges rebuilt from the piece scores),
              byte_fallback as trained
  decoder     Replace("▁" -> " "), ByteFallback, Fuse, Strip one leading space
  post        BOS prepended only when `add_bos=True` (default False: `sp.encode(text)` adds nothing)
so `tok(text)["input_ids"] == sp.encode(text)` (plus `[bos]` in front when add_bos=True).
`split_special_tokens=True` makes a literal "<s>" in the text spelled out, as sentencepiece does.
Known limit (unigram only): sentencepiece adds piece scores in float32, tokenizers in float64, so
when two segmentations have exactly equal scores (long runs like "******") the float32 rounding
can pick the other one. Both are the same text with the same score; measured on Python source:
0 of 16k single lines, about 1% of 20-line documents. BPE models match exactly. (transformers 5's
`SentencePieceBackend` would call sentencepiece itself, but it ignores add_bos_token and decodes
byte-fallback pieces as "<0xE6>", so the export does not use it.)
"""
from __future__ import annotations

import json
import math
import os
import shutil
import struct
from typing import Any, Mapping, Sequence

import numpy as np

PyTree = Any

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3  # 2 GiB, a common Hub shard size
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_MODEL_FILES = ("config.json", WEIGHTS_NAME, INDEX_NAME, "pytorch_model.bin")
_OWNED_FILES = ("config.json", "generation_config.json", INDEX_NAME, WEIGHTS_NAME,
                "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "README.md")


class ExportError(ValueError):
  """An export that cannot be written as asked; the message says what to change."""


# ----------------------------------------------------------------------------- sentencepiece proto
# A minimal protobuf wire-format reader: only the handful of fields the export needs, so neither
# `protobuf` nor `tokenizers` is a dependency.


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
  shift = result = 0
  while True:
    b = buf[i]
    i += 1
    result |= (b & 0x7F) << shift
    if not b & 0x80:
      return result, i
    shift += 7


def _fields(buf: bytes):
  """Yield (field number, wire type, value) of one protobuf message."""
  i = 0
  while i < len(buf):
    key, i = _read_varint(buf, i)
    num, wt = key >> 3, key & 7
    if wt == 0:
      val, i = _read_varint(buf, i)
    elif wt == 1:
      val, i = buf[i:i + 8], i + 8
    elif wt == 2:
      n, i = _read_varint(buf, i)
      val, i = buf[i:i + n], i + n
    elif wt == 5:
      val, i = buf[i:i + 4], i + 4
    else:
      raise ExportError(f"unsupported protobuf wire type {wt} in the sentencepiece model")
    yield num, wt, val


# SentencePiece.Type
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


def read_spm_model(path_or_bytes) -> dict:
  """Pieces, scores, types, model type and normaliser settings of a sentencepiece `.model`."""
  if isinstance(path_or_bytes, (bytes, bytearray)):
    buf = bytes(path_or_bytes)
  else:
    with open(path_or_bytes, "rb") as f:
      buf = f.read()
  pieces, scores, types = [], [], []
  trainer = {"model_type": "unigram", "byte_fallback": False, "unk_id": 0, "bos_id": 1,
             "eos_id": 2, "pad_id": -1, "treat_whitespace_as_suffix": False}
  norm = {"name": "", "precompiled_charsmap": b"", "add_dummy_prefix": True,
          "remove_extra_whitespaces": True, "escape_whitespaces": True}
  for num, wt, val in _fields(buf):
    if num == 1:  # repeated SentencePiece
      piece, score, typ = "", 0.0, _NORMAL
      for n2, _, v2 in _fields(val):
        if n2 == 1:
          piece = v2.decode("utf-8")
        elif n2 == 2:
          score = struct.unpack("<f", v2)[0]
        elif n2 == 3:
          typ = v2
      pieces.append(piece)
      scores.append(score)
      types.append(typ)
    elif num == 2:  # TrainerSpec
      for n2, _, v2 in _fields(val):
        if n2 == 3:
          trainer["model_type"] = _MODEL_TYPES.get(v2, str(v2))
        elif n2 == 35:
          trainer["byte_fallback"] = bool(v2)
        elif n2 == 24:
          trainer["treat_whitespace_as_suffix"] = bool(v2)
        elif n2 in (40, 41, 42, 43):
          trainer[{40: "unk_id", 41: "bos_id", 42: "eos_id", 43: "pad_id"}[n2]] = (
              v2 - (1 << 64) if v2 >= 1 << 63 else v2)  # int32 -1 arrives as a 64-bit varint
    elif num == 3:  # NormalizerSpec
      for n2, _, v2 in _fields(val):
        if n2 == 1:
          norm["name"] = v2.decode("utf-8")
        elif n2 == 2:
          norm["precompiled_charsmap"] = bytes(v2)
        elif n2 == 3:
          norm["add_dummy_prefix"] = bool(v2)
        elif n2 == 4:
          norm["remove_extra_whitespaces"] = bool(v2)
        elif n2 == 5:
          norm["escape_whitespaces"] = bool(v2)

  return _with_specials({"pieces": pieces, "scores": scores, "types": types, "trainer": trainer,
                         "normalizer": norm})


def _with_specials(spm: dict) -> dict:
  """spm plus the unk/bos/eos/pad pieces its trainer ids name (None where an id is unset)."""
  pieces, trainer = spm["pieces"], spm["trainer"]
  return dict(spm, **{k: pieces[trainer[f"{k}_id"]] if 0 <= trainer[f"{k}_id"] < len(pieces)
                      else None for k in ("unk", "bos", "eos", "pad")})


def restrict_vocab(spm: dict, token_ids) -> dict:
  """The tokenizer limited to the pieces at token_ids, in that order (new id i = token_ids[i]):
  what a TRIM/SPEC source's own table covers, so ids it never trained on do not exist for any
  consumer. A unigram model segments by the best-scoring path through its pieces, so text whose
  full-vocabulary segmentation uses only kept pieces gets the same pieces; other text is spelled
  with the kept ones (byte fallback where the source owns the bytes, else <unk>)."""
  ids = [int(i) for i in token_ids]
  if spm["trainer"]["model_type"] != "unigram":
    raise ExportError(f"restricting a {spm['trainer']['model_type']} tokenizer to a source's "
                      "pieces would change how it merges; dept_jax trains unigram tokenizers")
  new_id = {g: i for i, g in enumerate(ids)}
  trainer = dict(spm["trainer"], **{f"{k}_id": new_id.get(spm["trainer"][f"{k}_id"], -1)
                                    for k in ("unk", "bos", "eos", "pad")})
  if trainer["unk_id"] < 0:
    raise ExportError("the source's pieces must include <unk>: text it cannot spell maps to it")
  return _with_specials({**spm, "trainer": trainer, "pieces": [spm["pieces"][g] for g in ids],
                         "scores": [spm["scores"][g] for g in ids],
                         "types": [spm["types"][g] for g in ids]})


def _bpe_merges(pieces, scores, types) -> list[list[str]]:
  """sentencepiece BPE merges the adjacent pair whose joined piece scores highest; a merge list
  ranked by the joined piece's score (then id) makes `tokenizers`' BPE do the same."""
  vocab = {p: i for i, p in enumerate(pieces) if types[i] in (_NORMAL, _USER_DEFINED)}
  ranked = []
  for i, p in enumerate(pieces):
    if types[i] != _NORMAL or len(p) < 2:
      continue
    for k in range(1, len(p)):
      a, b = p[:k], p[k:]
      if a in vocab and b in vocab:
        ranked.append((-scores[i], i, vocab[a], [a, b]))
  ranked.sort(key=lambda r: r[:3])
  return [r[3] for r in ranked]


def spm_to_tokenizer_json(spm: dict, *, add_bos: bool = False, add_eos: bool = False) -> dict:
  """A `tokenizer.json` (tokenizers' serialisation) equivalent to encoding with sentencepiece."""
  pieces, scores, types = spm["pieces"], spm["scores"], spm["types"]
  trainer, norm = spm["trainer"], spm["normalizer"]
  mtype = trainer["model_type"]
  if mtype not in ("unigram", "bpe"):
    raise ExportError(f"sentencepiece model type '{mtype}' is not supported; train it as unigram "
                      "or bpe")
  if trainer["treat_whitespace_as_suffix"]:
    raise ExportError("sentencepiece models trained with treat_whitespace_as_suffix are not "
                      "supported by the export")
  normalizers = []
  if norm["precompiled_charsmap"]:
    import base64
    normalizers.append({"type": "Precompiled", "precompiled_charsmap":
                        base64.b64encode(norm["precompiled_charsmap"]).decode("ascii")})
  if norm["remove_extra_whitespaces"]:
    normalizers.append({"type": "Strip", "strip_left": True, "strip_right": True})
    normalizers.append({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "})
  if norm["add_dummy_prefix"]:
    normalizers.append({"type": "Prepend", "prepend": "\u2581"})
  if norm["escape_whitespaces"]:
    normalizers.append({"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"})

  unk_id = trainer["unk_id"] if 0 <= trainer["unk_id"] < len(pieces) else None
  if mtype == "unigram":
    # Pieces sentencepiece never produces from text (control, byte, unused) must not win the
    # lattice in tokenizers either: give them a score below anything real.
    normal = [s for s, t in zip(scores, types) if t == _NORMAL] or [0.0]
    floor = min(normal) - 1e4
    # sentencepiece scores a user-defined piece len(utf-8 bytes) * max_score - 0.1, with
    # max_score starting at FLT_MIN (so about -0.1): it always wins over spelling it out.
    max_score = max(normal + [1.17549435e-38])

    def score(p, s, t):
      if t == _NORMAL:
        return float(s)
      if t == _USER_DEFINED:
        return len(p.encode("utf-8")) * max_score - 0.1
      return floor

    vocab = [[p, score(p, s, t)] for p, s, t in zip(pieces, scores, types)]
    model = {"type": "Unigram", "unk_id": unk_id, "vocab": vocab,
             "byte_fallback": bool(trainer["byte_fallback"])}
  else:
    model = {"type": "BPE", "dropout": None, "unk_token": spm["unk"],
             "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
             "byte_fallback": bool(trainer["byte_fallback"]), "ignore_merges": False,
             "vocab": {p: i for i, p in enumerate(pieces)},
             "merges": _bpe_merges(pieces, scores, types)}

  added = []
  for i, (p, t) in enumerate(zip(pieces, types)):
    if t in (_CONTROL, _UNKNOWN):
      added.append({"id": i, "content": p, "single_word": False, "lstrip": False,
                    "rstrip": False, "normalized": False, "special": True})

  single = []
  special_tokens = {}
  for flag, name in ((add_bos, "bos"), (add_eos, "eos")):
    if flag and spm[name] is None:
      raise ExportError(f"add_{name}=True but the sentencepiece model has no {name} piece")
  if add_bos:
    single.append({"SpecialToken": {"id": spm["bos"], "type_id": 0}})
    special_tokens[spm["bos"]] = {"id": spm["bos"], "ids": [trainer["bos_id"]],
                                  "tokens": [spm["bos"]]}
  single.append({"Sequence": {"id": "A", "type_id": 0}})
  if add_eos:
    single.append({"SpecialToken": {"id": spm["eos"], "type_id": 0}})
    special_tokens[spm["eos"]] = {"id": spm["eos"], "ids": [trainer["eos_id"]],
                                  "tokens": [spm["eos"]]}
  pair = single + [dict(x) for x in single]
  pair = [({"Sequence": {"id": "B", "type_id": 1}} if "Sequence" in x else
           {"SpecialToken": {"id": x["SpecialToken"]["id"], "type_id": 1}})
          if k >= len(single) else x for k, x in enumerate(pair)]

  decoders = [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}]
  if trainer["byte_fallback"]:
    decoders.append({"type": "ByteFallback"})
  decoders.append({"type": "Fuse"})
  if norm["add_dummy_prefix"]:
    decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
  return {
      "version": "1.0",
      "truncation": None,
      "padding": None,
      "added_tokens": added,
      "normalizer": {"type": "Sequence", "normalizers": normalizers} if normalizers else None,
      "pre_tokenizer": None,
      "post_processor": {"type": "TemplateProcessing", "single": single, "pair": pair,
                         "special_tokens": special_tokens},
      "decoder": {"type": "Sequence", "decoders": decoders},
      "model": model,
  }


# ----------------------------------------------------------------------------- weights


def _to_numpy(x) -> np.ndarray:
  return np.asarray(x)  # jax arrays (also sharded ones) come to host here


def hf_state_dict(body: PyTree, embed: PyTree, vocab_size: int, model_cfg,
                  dtype: str = "float32") -> dict[str, np.ndarray]:
  """LlamaForCausalLM tensor names -> numpy arrays ([out, in] for linears, as torch stores them).
  Padding rows past `vocab_size` are dropped."""
  np_dtype = _numpy_dtype(dtype)
  L = model_cfg.n_layers
  blocks = {k: _to_numpy(v) for k, v in body["blocks"].items()}
  for name, w in blocks.items():
    if w.shape[0] != L:
      raise ExportError(f"body['blocks']['{name}'] has {w.shape[0]} layers, model.n_layers={L}")
  table = _to_numpy(embed["table"])
  if table.shape[0] < vocab_size:
    raise ExportError(f"embedding table has {table.shape[0]} rows but vocab_size={vocab_size}")
  if table.shape[1] != model_cfg.d_model:
    raise ExportError(f"embedding width {table.shape[1]} != model.d_model={model_cfg.d_model}")
  out = {"model.embed_tokens.weight": table[:vocab_size]}
  if not model_cfg.tie_embeddings:
    if "head" not in embed:
      raise ExportError("model.tie_embeddings=False but the embedding has no 'head'")
    out["lm_head.weight"] = _to_numpy(embed["head"])[:vocab_size]
  names = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
           "wo": "self_attn.o_proj", "w_gate": "mlp.gate_proj", "w_up": "mlp.up_proj",
           "w_down": "mlp.down_proj"}
  for i in range(L):
    pre = f"model.layers.{i}."
    out[pre + "input_layernorm.weight"] = blocks["attn_norm"][i]
    out[pre + "post_attention_layernorm.weight"] = blocks["mlp_norm"][i]
    for ours, theirs in names.items():
      out[pre + theirs + ".weight"] = blocks[ours][i].T  # x @ W [in, out] == Linear with W.T
  out["model.norm.weight"] = _to_numpy(body["final_norm"])
  return {k: np.ascontiguousarray(v.astype(np_dtype)) for k, v in out.items()}


def _numpy_dtype(dtype: str):
  if dtype == "float32":
    return np.float32
  if dtype == "float16":
    return np.float16
  if dtype == "bfloat16":
    import ml_dtypes  # ships with jax
    return ml_dtypes.bfloat16
  raise ExportError(f"unsupported export dtype '{dtype}'; use float32, bfloat16 or float16")


def save_safetensors(out_dir: str, tensors: Mapping[str, np.ndarray],
                     max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
  """One `model.safetensors`, or shards `model-0000i-of-0000n.safetensors` plus the index
  transformers reads when the total is larger than `max_shard_bytes`. Returns the files written."""
  from safetensors.numpy import save_file
  if max_shard_bytes <= 0:
    raise ExportError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
  total = sum(int(v.nbytes) for v in tensors.values())
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, arr in tensors.items():  # a tensor bigger than the limit gets a shard of its own
    if shards[-1] and size + arr.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = arr
    size += int(arr.nbytes)
  meta = {"format": "pt"}
  if len(shards) == 1:
    save_file(dict(shards[0]), os.path.join(out_dir, WEIGHTS_NAME), metadata=meta)
    return [WEIGHTS_NAME]
  files, weight_map = [], {}
  for i, shard in enumerate(shards):
    fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(dict(shard), os.path.join(out_dir, fname), metadata=meta)
    files.append(fname)
    weight_map.update({name: fname for name in shard})
  _write_json(os.path.join(out_dir, INDEX_NAME),
              {"metadata": {"total_size": total}, "weight_map": weight_map})
  return files + [INDEX_NAME]


# ----------------------------------------------------------------------------- configs


def llama_config(model_cfg, vocab_size: int, *, bos_id=None, eos_id=None, pad_id=None,
                 max_position_embeddings: int = 2048, dtype: str = "float32") -> dict:
  hd = model_cfg.d_model // model_cfg.n_heads
  kv = model_cfg.n_kv_heads if model_cfg.n_kv_heads > 0 else model_cfg.n_heads
  theta = float(model_cfg.rope_theta)
  return {
      "architectures": ["LlamaForCausalLM"],
      "model_type": "llama",
      "vocab_size": int(vocab_size),
      "hidden_size": int(model_cfg.d_model),
      "intermediate_size": int(model_cfg.d_ff),
      "num_hidden_layers": int(model_cfg.n_layers),
      "num_attention_heads": int(model_cfg.n_heads),
      "num_key_value_heads": int(kv),
      "head_dim": int(hd),
      "hidden_act": "silu",
      "max_position_embeddings": int(max_position_embeddings),
      "rms_norm_eps": float(model_cfg.norm_eps),
      # transformers 5 reads rope_parameters; older versions read rope_theta.
      "rope_theta": theta,
      "rope_parameters": {"rope_type": "default", "rope_theta": theta},
      "rope_scaling": None,
      "tie_word_embeddings": bool(model_cfg.tie_embeddings),
      "attention_bias": False,
      "attention_dropout": 0.0,
      "mlp_bias": False,
      "pretraining_tp": 1,
      "initializer_range": float(model_cfg.init_std),
      "use_cache": True,
      "bos_token_id": bos_id,
      "eos_token_id": eos_id,
      "pad_token_id": pad_id,
      "torch_dtype": dtype,
      "dtype": dtype,
  }


def _write_json(path: str, obj) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, ensure_ascii=False)
    f.write("\n")


def write_tokenizer(out_dir: str, tokenizer_path: str, *, token_ids=None, add_bos: bool = False,
                    add_eos: bool = False, model_max_length: int | None = None) -> dict:
  """tokenizer.model (copied), tokenizer.json, tokenizer_config.json, special_tokens_map.json.
  With token_ids, the tokenizer restricted to those pieces (`restrict_vocab`) and no
  tokenizer.model: sentencepiece cannot load a byte-fallback model that lacks some of the 256 byte
  pieces, and the full one would give other ids. Returns the parsed (restricted) model."""
  spm = read_spm_model(tokenizer_path)
  if token_ids is None:
    shutil.copyfile(tokenizer_path, os.path.join(out_dir, "tokenizer.model"))
  else:
    spm = restrict_vocab(spm, token_ids)
  _write_json(os.path.join(out_dir, "tokenizer.json"),
              spm_to_tokenizer_json(spm, add_bos=add_bos, add_eos=add_eos))
  specials = {f"{k}_token": spm[k] for k in ("bos", "eos", "unk", "pad") if spm[k] is not None}
  added_decoder = {
      str(i): {"content": p, "lstrip": False, "normalized": False, "rstrip": False,
               "single_word": False, "special": True}
      for i, (p, t) in enumerate(zip(spm["pieces"], spm["types"])) if t in (_CONTROL, _UNKNOWN)}
  tok_cfg = {
      # The generic fast tokenizer (TokenizersBackend in transformers 5) loads tokenizer.json as
      # written; LlamaTokenizer would rebuild a BPE/Metaspace pipeline and lose parity.
      "tokenizer_class": "PreTrainedTokenizerFast",
      "add_bos_token": bool(add_bos),
      "add_eos_token": bool(add_eos),
      "clean_up_tokenization_spaces": False,
      "legacy": False,
      # A literal "<s>" in the text is spelled out, as sentencepiece does, not read as BOS.
      "split_special_tokens": True,
      "model_max_length": int(model_max_length) if model_max_length else int(1e30),
      "added_tokens_decoder": added_decoder,
      **specials,
  }
  _write_json(os.path.join(out_dir, "tokenizer_config.json"), tok_cfg)
  _write_json(os.path.join(out_dir, "special_tokens_map.json"), specials)
  return spm


def _model_card(*, variant: str, source_name: str, sources: Sequence[str], vocab_size: int,
                n_params: int, model_cfg, eval_results: Mapping[str, Any] | None,
                add_bos: bool, restricted_from: int | None = None) -> str:
  kv = model_cfg.n_kv_heads if model_cfg.n_kv_heads > 0 else model_cfg.n_heads
  lines = [
      "---",
      "library_name: transformers",
      "pipeline_tag: text-generation",
      "tags:",
      "- dept",
      "- dept_jax",
      f"- {variant}",
      "---",
      "",
      f"# DEPT ({variant}) model for source `{source_name}`",
      "",
      "Trained with dept_jax: DEPT, Decoupled Embeddings for Pre-Training "
      "(Iacob et al., arXiv 2410.05021): one transformer body shared by all sources, with "
      "per-source token embeddings. This folder holds the shared body together with the "
      f"embedding and tokenizer of source `{source_name}`, as a Llama-architecture causal LM.",
      "",
      f"- Variant: `{variant}`",
      f"- This source: `{source_name}`",
      f"- All sources trained together ({len(sources)}): " + ", ".join(f"`{s}`" for s in sources),
      f"- Parameters: {n_params:,} (vocabulary {vocab_size:,}, width {model_cfg.d_model}, "
      f"{model_cfg.n_layers} layers, {model_cfg.n_heads} heads, {kv} key/value heads, "
      f"MLP {model_cfg.d_ff}, tied embeddings: {bool(model_cfg.tie_embeddings)})",
      (f"- Tokenizer: the sentencepiece model the source was trained with (`tokenizer.model`); "
       f"`AutoTokenizer` gives the same ids as `sentencepiece` "
       f"({'with' if add_bos else 'without'} a BOS token in front)." if restricted_from is None
       else f"- Tokenizer: the run's {restricted_from:,}-piece global tokenizer restricted to the "
       f"{vocab_size:,} pieces this source trained on (`tokenizer.json`; ids are this model's "
       "rows, and no other id exists). Text the global tokenizer would spell with a piece this "
       "source never trained on is spelled with its own pieces."),
      "",
      "## Evaluation",
      "",
  ]
  if eval_results:
    lines += ["| metric | value |", "|---|---|"]
    for k, v in eval_results.items():
      if isinstance(v, float):
        v = f"{v:.4f}" if math.isfinite(v) else str(v)
      lines.append(f"| {k} | {v} |")
  else:
    lines.append("No evaluation results were recorded at export time.")
  lines += [
      "",
      "Loss and perplexity are in this source's own tokens; bits per byte compare across "
      "tokenizers.",
      "",
      "## Use",
      "",
      "```python",
      "from transformers import AutoModelForCausalLM, AutoTokenizer",
      "tok = AutoTokenizer.from_pretrained(PATH)",
      "model = AutoModelForCausalLM.from_pretrained(PATH)",
      "ids = tok(\"Hello\", return_tensors=\"pt\").input_ids",
      "print(tok.decode(model.generate(ids, max_new_tokens=32, do_sample=True, top_p=0.9)[0]))",
      "```",
      "",
  ]
  return "\n".join(lines)


# ----------------------------------------------------------------------------- export


def holds_model(out_dir: str) -> bool:
  if not os.path.isdir(out_dir):
    return False
  names = os.listdir(out_dir)
  return any(n in _MODEL_FILES or (n.startswith("model") and n.endswith(".safetensors"))
             for n in names)


def _owned_names(out_dir: str) -> list[str]:
  """Files in out_dir an export writes (and --overwrite replaces)."""
  return sorted(n for n in os.listdir(out_dir)
                if n in _OWNED_FILES or (n.startswith("model-") and n.endswith(".safetensors")))


def check_out_dir(out_dir: str, overwrite: bool) -> None:
  """Refuse, before any work, an output the export cannot write as asked: a file, a folder below a
  file, or a folder holding files the export would replace (a model, or e.g. the user's own
  README.md) unless overwrite."""
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise ExportError(f"--out {out_dir} is a file, not a folder. Fix: pass a folder path (it is "
                      "created if missing).")
  parent = os.path.dirname(os.path.abspath(out_dir))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ExportError(f"--out {out_dir} cannot be created: {parent} is a file. Fix: pass a folder "
                      "path whose parents are folders.")
  if overwrite or not os.path.isdir(out_dir):
    return
  if holds_model(out_dir):
    raise FileExistsError(
        f"{out_dir} already holds a model (config.json or safetensors weights); refusing to "
        "overwrite it. Fix: pass --overwrite (overwrite=True) to replace it, or choose another "
        "folder.")
  mine = _owned_names(out_dir)
  if mine:
    raise FileExistsError(
        f"{out_dir} already holds {', '.join(mine)}, which the export would overwrite. Fix: pass "
        "--overwrite (overwrite=True) to replace them, or choose another folder.")


def _clear_owned(out_dir: str) -> None:
  for n in _owned_names(out_dir):
    os.remove(os.path.join(out_dir, n))


def export_source(out_dir: str, body: PyTree, embed: PyTree, vocab_size: int, model_cfg,
                  tokenizer_path: str, *, variant: str, source_name: str,
                  sources: Sequence[str] = (), eval_results: Mapping[str, Any] | None = None,
                  overwrite: bool = False, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                  dtype: str = "float32", add_bos: bool = False,
                  max_position_embeddings: int = 2048,
                  generation: Mapping[str, Any] | None = None, token_ids=None) -> dict:
  """Write one source's model as a Hugging Face folder (LlamaForCausalLM + its tokenizer).

  body, embed: dept_jax pytrees, embed in the ids of `tokenizer_path` (or, with token_ids, row i
    standing for its piece token_ids[i]). Rows at or past `vocab_size` are dropped.
  vocab_size: the real vocabulary size; must equal the tokenizer's (kept) piece count.
  token_ids: TRIM/SPEC: the global ids a source's own table covers; the export then holds that
    table and the tokenizer restricted to those pieces (`restrict_vocab`), so an id the source
    never trained on exists for no consumer.
  add_bos: whether the tokenizer puts BOS in front (False: `sp.encode(text)` ids exactly).
  generation: extra generation_config.json fields (e.g. {'do_sample': True, 'top_p': 0.9}).
  Returns {'files': [...], 'config': config.json dict, 'num_params': int}.
  """
  check_out_dir(out_dir, overwrite)
  if not os.path.isfile(tokenizer_path):
    raise ExportError(f"tokenizer model {tokenizer_path} does not exist")
  if tokenizer_path.endswith(".json"):
    return _export_with_tokenizer_json(
        out_dir, body, embed, vocab_size, model_cfg, tokenizer_path, variant=variant,
        source_name=source_name, sources=sources, eval_results=eval_results,
        overwrite=overwrite, max_shard_bytes=max_shard_bytes, dtype=dtype,
        max_position_embeddings=max_position_embeddings, generation=generation,
        token_ids=token_ids)
  full = read_spm_model(tokenizer_path)
  spm = full if token_ids is None else restrict_vocab(full, token_ids)
  if len(spm["pieces"]) != vocab_size:
    raise ExportError(f"vocab_size={vocab_size} but the tokenizer {tokenizer_path} has "
                      f"{len(spm['pieces'])} pieces{'' if token_ids is None else ' kept'}: export "
                      "the source with the tokenizer its table was trained with (TRIM/SPEC: the "
                      "global ids of its rows as token_ids)")
  tensors = hf_state_dict(body, embed, vocab_size, model_cfg, dtype=dtype)
  os.makedirs(out_dir, exist_ok=True)
  if overwrite:
    _clear_owned(out_dir)
  tr = spm["trainer"]
  ids = {k: (tr[f"{k}_id"] if 0 <= tr[f"{k}_id"] < vocab_size else None)
         for k in ("bos", "eos", "pad")}
  files = save_safetensors(out_dir, tensors, max_shard_bytes)
  write_tokenizer(out_dir, tokenizer_path, token_ids=token_ids, add_bos=add_bos,
                  model_max_length=max_position_embeddings)
  files += (["tokenizer.model"] if token_ids is None else []) + [
      "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
  config = llama_config(model_cfg, vocab_size, bos_id=ids["bos"], eos_id=ids["eos"],
                        pad_id=ids["pad"], max_position_embeddings=max_position_embeddings,
                        dtype=dtype)
  gen = {"bos_token_id": ids["bos"], "eos_token_id": ids["eos"],
         "pad_token_id": ids["pad"] if ids["pad"] is not None else ids["eos"]}
  n_params = _write_config_and_card(
      out_dir, config, {**gen, **dict(generation or {})}, tensors, variant=variant,
      source_name=source_name, sources=list(sources) or [source_name], vocab_size=vocab_size,
      model_cfg=model_cfg, eval_results=eval_results, add_bos=add_bos,
      restricted_from=None if token_ids is None else len(full["pieces"]))
  files += ["config.json", "generation_config.json", "README.md"]
  return {"files": files, "config": config, "num_params": n_params}


def _write_config_and_card(out_dir, config, generation, tensors, **card) -> int:
  """config.json, generation_config.json and the model card (README.md); returns the parameter
  count the card states."""
  _write_json(os.path.join(out_dir, "config.json"), config)
  _write_json(os.path.join(out_dir, "generation_config.json"), generation)
  n_params = sum(int(v.size) for v in tensors.values())
  with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
    f.write(_model_card(n_params=n_params, **card))
  return n_params


def _export_with_tokenizer_json(out_dir, body, embed, vocab_size, model_cfg, tokenizer_path, *,
                                variant, source_name, sources, eval_results, overwrite,
                                max_shard_bytes, dtype, max_position_embeddings, generation,
                                token_ids) -> dict:
  """A run whose tokenizer is a Hugging Face tokenizer.json (e.g. GPT-NeoX's): the file goes in
  as it is, with a tokenizer_config.json naming its end-of-document token."""
  from dept_jax.data import tokenizers
  if token_ids is not None:
    raise ExportError(
        f"{variant} exports a source's own vocabulary, and restricting the tokenizer.json "
        f"{tokenizer_path} to that source's pieces is not supported (a BPE model's merges would "
        "reach pieces it does not own). Fix: train TRIM/SPEC runs you want to export with a "
        "sentencepiece tokenizer (data.tokenizer=*.model, or none to train one), or export a "
        "glob/std/spec_opt run.")
  tok = tokenizers.load(tokenizer_path)
  if tok.vocab_size != vocab_size:
    raise ExportError(f"vocab_size={vocab_size} but the tokenizer {tokenizer_path} has "
                      f"{tok.vocab_size} ids: export the source with the tokenizer its table was "
                      "trained with")
  tensors = hf_state_dict(body, embed, vocab_size, model_cfg, dtype=dtype)
  os.makedirs(out_dir, exist_ok=True)
  if overwrite:
    _clear_owned(out_dir)
  files = save_safetensors(out_dir, tensors, max_shard_bytes)
  shutil.copyfile(tokenizer_path, os.path.join(out_dir, "tokenizer.json"))
  specials = {"eos_token": tok.eos_token}
  _write_json(os.path.join(out_dir, "tokenizer_config.json"), {
      "tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False,
      "add_eos_token": False, "clean_up_tokenization_spaces": False,
      "model_max_length": int(max_position_embeddings), **specials})
  _write_json(os.path.join(out_dir, "special_tokens_map.json"), specials)
  config = llama_config(model_cfg, vocab_size, bos_id=None, eos_id=tok.eos_id, pad_id=None,
                        max_position_embeddings=max_position_embeddings, dtype=dtype)
  gen = {"eos_token_id": tok.eos_id, "pad_token_id": tok.eos_id, **dict(generation or {})}
  n_params = _write_config_and_card(
      out_dir, config, gen, tensors, variant=variant, source_name=source_name,
      sources=list(sources) or [source_name], vocab_size=vocab_size, model_cfg=model_cfg,
      eval_results=eval_results, add_bos=False, restricted_from=None)
  files += ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json",
            "generation_config.json", "README.md"]
  return {"files": files, "config": config, "num_params": n_params}
