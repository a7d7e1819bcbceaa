"""Export one source's model (shared body + that source's embedding + its tokenizer) to a Hugging
Face folder that `transformers` loads with no extra code:

    AutoModelForCausalLM.from_pretrained(out_dir)   # LlamaForCausalLM
    AutoTokenizer.from_pretrained(out_dir)          # the ids the run trained on

One path for every run: the tokenizer becomes a `tokenizers.Tokenizer` (`hf_tokenizer`: a
sentencepiece model converted, a tokenizer.json as is; TRIM/SPEC restricted to the source's pieces)
saved by `Tokenizer.save`; the weights go through `safetensors.numpy` (torch-free), sharded by
`huggingface_hub`'s splitter; the model card is a `huggingface_hub.ModelCard`.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from typing import Any, Mapping, Sequence

import ml_dtypes
import numpy as np
from huggingface_hub import ModelCard, ModelCardData, split_state_dict_into_shards_factory
from safetensors.numpy import save_file

from dept_jax import hf_tokenizer
from dept_jax.vocab_restrict import ExportError  # the export's one error, raised by all three

PyTree = Any

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3  # 2 GiB, a common Hub shard size
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_MODEL_FILES = ("config.json", WEIGHTS_NAME, INDEX_NAME, "pytorch_model.bin")
_OWNED_FILES = ("config.json", "generation_config.json", INDEX_NAME, WEIGHTS_NAME,
                "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "README.md")
_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
_LINEARS = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
            "wo": "self_attn.o_proj", "w_gate": "mlp.gate_proj", "w_up": "mlp.up_proj",
            "w_down": "mlp.down_proj"}


# ----------------------------------------------------------------------------- weights


def hf_state_dict(body: PyTree, embed: PyTree, rows, model_cfg,
                  dtype: str = "float32") -> dict[str, np.ndarray]:
  """LlamaForCausalLM tensor names -> numpy arrays ([out, in] for linears, as torch stores them).
  rows: the table row of each exported id (padding rows are never among them)."""
  if dtype not in _DTYPES:
    raise ExportError(f"unsupported export dtype '{dtype}'; use float32, bfloat16 or float16")
  L, rows = model_cfg.n_layers, np.asarray(rows)
  blocks = {k: np.asarray(v) for k, v in body["blocks"].items()}
  for name, w in blocks.items():
    if w.shape[0] != L:
      raise ExportError(f"body['blocks']['{name}'] has {w.shape[0]} layers, model.n_layers={L}")
  table = np.asarray(embed["table"])
  if table.shape[0] <= rows.max(initial=-1):
    raise ExportError(f"embedding table has {table.shape[0]} rows but the tokenizer reads row "
                      f"{rows.max()}")
  if table.shape[1] != model_cfg.d_model:
    raise ExportError(f"embedding width {table.shape[1]} != model.d_model={model_cfg.d_model}")
  out = {"model.embed_tokens.weight": table[rows]}
  if not model_cfg.tie_embeddings:
    if "head" not in embed:
      raise ExportError("model.tie_embeddings=False but the embedding has no 'head'")
    out["lm_head.weight"] = np.asarray(embed["head"])[rows]
  for i in range(L):
    pre = f"model.layers.{i}."
    out[pre + "input_layernorm.weight"] = blocks["attn_norm"][i]
    out[pre + "post_attention_layernorm.weight"] = blocks["mlp_norm"][i]
    for ours, theirs in _LINEARS.items():
      out[pre + theirs + ".weight"] = blocks[ours][i].T  # x @ W [in, out] == Linear with W.T
  out["model.norm.weight"] = np.asarray(body["final_norm"])
  return {k: np.ascontiguousarray(v.astype(_DTYPES[dtype])) for k, v in out.items()}


def save_safetensors(out_dir: str, tensors: Mapping[str, np.ndarray],
                     max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
  """One `model.safetensors`, or shards `model-0000i-of-0000n.safetensors` plus the index
  transformers reads when the total is larger than `max_shard_bytes` (a tensor larger than that
  gets a shard of its own). Returns the files written."""
  if max_shard_bytes <= 0:
    raise ExportError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
  split = split_state_dict_into_shards_factory(
      dict(tensors), get_storage_size=lambda a: int(a.nbytes),
      filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_bytes)
  for name, keys in split.filename_to_tensors.items():
    save_file({k: tensors[k] for k in keys}, os.path.join(out_dir, name), metadata={"format": "pt"})
  files = list(split.filename_to_tensors)
  if split.is_sharded:
    _write_json(os.path.join(out_dir, INDEX_NAME),
                {"metadata": split.metadata, "weight_map": split.tensor_to_filename})
    files.append(INDEX_NAME)
  return files


# ----------------------------------------------------------------------------- configs


def llama_config(model_cfg, vocab_size: int, *, bos_id=None, eos_id=None, pad_id=None,
                 max_position_embeddings: int = 2048, dtype: str = "float32") -> dict:
  kv = model_cfg.n_kv_heads if model_cfg.n_kv_heads > 0 else model_cfg.n_heads
  theta = float(model_cfg.rope_theta)
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "vocab_size": int(vocab_size), "hidden_size": int(model_cfg.d_model),
      "intermediate_size": int(model_cfg.d_ff), "num_hidden_layers": int(model_cfg.n_layers),
      "num_attention_heads": int(model_cfg.n_heads), "num_key_value_heads": int(kv),
      "head_dim": int(model_cfg.d_model // model_cfg.n_heads), "hidden_act": "silu",
      "max_position_embeddings": int(max_position_embeddings),
      "rms_norm_eps": float(model_cfg.norm_eps),
      # transformers 5 reads rope_parameters; older versions read rope_theta.
      "rope_theta": theta, "rope_parameters": {"rope_type": "default", "rope_theta": theta},
      "rope_scaling": None, "tie_word_embeddings": bool(model_cfg.tie_embeddings),
      "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False, "pretraining_tp": 1,
      "initializer_range": float(model_cfg.init_std), "use_cache": True,
      "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id,
      "torch_dtype": dtype, "dtype": dtype,
  }


def _write_json(path: str, obj) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, ensure_ascii=False)
    f.write("\n")


def write_tokenizer(out_dir: str, tok: hf_tokenizer.ExportTokenizer,
                    model_max_length: int) -> list[str]:
  """tokenizer.json (and the sentencepiece tokenizer.model of a full vocabulary),
  tokenizer_config.json, special_tokens_map.json. Returns the files written."""
  tok.tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
  files = ["tokenizer.json"]
  if tok.sentencepiece:
    shutil.copyfile(tok.sentencepiece, os.path.join(out_dir, "tokenizer.model"))
    files.append("tokenizer.model")
  specials = {f"{k}_token": p for k, p in tok.specials.items()}
  added = {str(i): {"content": a.content, "lstrip": a.lstrip, "normalized": a.normalized,
                    "rstrip": a.rstrip, "single_word": a.single_word, "special": a.special}
           for i, a in sorted(tok.tokenizer.get_added_tokens_decoder().items())}
  _write_json(os.path.join(out_dir, "tokenizer_config.json"), {
      # The generic fast tokenizer (TokenizersBackend in transformers 5) loads tokenizer.json as
      # written; LlamaTokenizer would rebuild a BPE/Metaspace pipeline and lose parity.
      "tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": tok.add_bos,
      "add_eos_token": False, "clean_up_tokenization_spaces": False, "legacy": False,
      # sentencepiece spells a literal "<s>" out; a tokenizer.json reads its added tokens as the
      # run's tokenizer did.
      "split_special_tokens": tok.split_special_tokens,
      "model_max_length": int(model_max_length), "added_tokens_decoder": added, **specials})
  _write_json(os.path.join(out_dir, "special_tokens_map.json"), specials)
  return files + ["tokenizer_config.json", "special_tokens_map.json"]


def _model_card(tok: hf_tokenizer.ExportTokenizer, *, variant: str, source_name: str,
                sources: Sequence[str], n_params: int, model_cfg,
                eval_results: Mapping[str, Any] | None) -> ModelCard:
  V, m = len(tok.rows), model_cfg
  kv = m.n_kv_heads if m.n_kv_heads > 0 else m.n_heads
  if tok.restricted_from is None:
    vocab = (f"the sentencepiece model the source was trained with (`tokenizer.model`); "
             f"`AutoTokenizer` gives the same ids as `sentencepiece` "
             f"({'with' if tok.add_bos else 'without'} a BOS token in front)."
             if tok.sentencepiece else "the `tokenizer.json` the run was trained with.")
  else:
    own = tok.own
    vocab = (f"the run's {tok.restricted_from:,}-piece global tokenizer restricted to the {own:,} "
             "pieces this source trained on (`tokenizer.json`; id i is row i of its table). Text "
             "the global tokenizer would spell with a piece this source never trained on is "
             "spelled with its own pieces.")
    if V > own:
      unk = tok.tokenizer.id_to_token(int(tok.rows[own]))
      vocab += (f" Ids {own:,}-{V - 1:,} are {V - own:,} pieces it never trained on that the "
                "tokenizer needs to spell any text (single bytes or characters, and pieces a merge "
                f"builds on the way to its own); they share the row of `{unk}`, the row training "
                "used for text the source did not own, so such text is read as the run read it. "
                "With tied embeddings they score as that piece too: `generation_config.json` "
                "suppresses them (as the run never generates them); a server that ignores "
                "`suppress_tokens` may sample them where it would sample that piece.")
  lines = [
      f"# DEPT ({variant}) model for source `{source_name}`", "",
      "Trained with dept_jax: DEPT, Decoupled Embeddings for Pre-Training (Iacob et al., arXiv "
      "2410.05021): one transformer body shared by all sources, with per-source token "
      "embeddings. This folder holds the shared body together with the embedding and tokenizer "
      f"of source `{source_name}`, as a Llama-architecture causal LM.", "",
      f"- Variant: `{variant}`", f"- This source: `{source_name}`",
      f"- All sources trained together ({len(sources)}): " + ", ".join(f"`{s}`" for s in sources),
      f"- Parameters: {n_params:,} (vocabulary {V:,}, width {m.d_model}, {m.n_layers} layers, "
      f"{m.n_heads} heads, {kv} key/value heads, MLP {m.d_ff}, tied embeddings: "
      f"{bool(m.tie_embeddings)})",
      f"- Tokenizer: {vocab}", "", "## Evaluation", ""]
  if eval_results:
    lines += ["| metric | value |", "|---|---|"]
    for k, v in eval_results.items():
      if isinstance(v, float):
        v = f"{v:.4f}" if math.isfinite(v) else str(v)
      lines.append(f"| {k} | {v} |")
  else:
    lines.append("No evaluation results were recorded at export time.")
  lines += ["", "Loss and perplexity are in this source's own tokens; bits per byte compare "
            "across tokenizers.", "", "## Use", "", "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "tok = AutoTokenizer.from_pretrained(PATH)",
            "model = AutoModelForCausalLM.from_pretrained(PATH)",
            "ids = tok(\"Hello\", return_tensors=\"pt\").input_ids",
            "out = model.generate(ids, max_new_tokens=32, do_sample=True, top_p=0.9)",
            "print(tok.decode(out[0]))",
            "```", ""]
  meta = ModelCardData(library_name="transformers", pipeline_tag="text-generation",
                       tags=["dept", "dept_jax", variant])
  return ModelCard(f"---\n{meta.to_yaml()}\n---\n\n" + "\n".join(lines))


# ----------------------------------------------------------------------------- the folder


def holds_model(out_dir: str) -> bool:
  return os.path.isdir(out_dir) and any(
      n in _MODEL_FILES or (n.startswith("model") and n.endswith(".safetensors"))
      for n in os.listdir(out_dir))


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
  fix = "Fix: pass --overwrite (overwrite=True) to replace {}, or choose another folder."
  if holds_model(out_dir):
    raise FileExistsError(f"{out_dir} already holds a model (config.json or safetensors weights); "
                          "refusing to overwrite it. " + fix.format("it"))
  mine = _owned_names(out_dir)
  if mine:
    raise FileExistsError(f"{out_dir} already holds {', '.join(mine)}, which the export would "
                          "overwrite. " + fix.format("them"))


def export_source(out_dir: str, body: PyTree, embed: PyTree, vocab_size: int, model_cfg,
                  tokenizer, *, variant: str, source_name: str, sources: Sequence[str] = (),
                  eval_results: Mapping[str, Any] | None = None, overwrite: bool = False,
                  max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, dtype: str = "float32",
                  add_bos: bool = False, max_position_embeddings: int = 2048,
                  generation: Mapping[str, Any] | None = None, token_ids=None) -> dict:
  """Write one source's model as a Hugging Face folder (LlamaForCausalLM + its tokenizer).

  body, embed: dept_jax pytrees; embed's row i stands for the tokenizer's id i, or (TRIM/SPEC,
    token_ids given) for the global id token_ids[i]. vocab_size: the table's real rows (padding
    rows past it are dropped); the tokenizer (or token_ids) must have as many.
  tokenizer: the run's sentencepiece .model or tokenizer.json (a path, or a loaded
    `dept_jax.data.tokenizers.Tokenizer`, which carries the run's EOS choice).
  token_ids: TRIM/SPEC: the export holds that table and the tokenizer restricted to its pieces
    (`vocab_restrict`), so an id the source never trained on exists for no consumer.
  add_bos: whether a sentencepiece tokenizer puts BOS in front (False: `sp.encode(text)` exactly).
  generation: extra generation_config.json fields (e.g. {'do_sample': True, 'top_p': 0.9}).
  Returns {'files': [...], 'config': config.json dict, 'num_params': int}.
  """
  check_out_dir(out_dir, overwrite)
  path = tokenizer if isinstance(tokenizer, str) else tokenizer.path
  if not os.path.isfile(path):
    raise ExportError(f"tokenizer model {path} does not exist")
  tok = hf_tokenizer.for_export(tokenizer, token_ids, add_bos)
  table_rows = len(tok.rows) if token_ids is None else len(token_ids)
  if table_rows != vocab_size:
    raise ExportError(f"vocab_size={vocab_size} but the tokenizer {path} has {table_rows} pieces"
                      f"{'' if token_ids is None else ' kept'}: export the source with the "
                      "tokenizer its table was trained with (TRIM/SPEC: the global ids of its rows "
                      "as token_ids)")
  tensors = hf_state_dict(body, embed, tok.rows, model_cfg, dtype=dtype)
  os.makedirs(out_dir, exist_ok=True)
  for n in _owned_names(out_dir) if overwrite else ():
    os.remove(os.path.join(out_dir, n))
  files = save_safetensors(out_dir, tensors, max_shard_bytes)
  files += write_tokenizer(out_dir, tok, max_position_embeddings)
  ids = {f"{k}_id": tok.id_of(k) for k in ("bos", "eos", "pad")}
  config = llama_config(model_cfg, len(tok.rows), **ids,
                        max_position_embeddings=max_position_embeddings, dtype=dtype)
  _write_json(os.path.join(out_dir, "config.json"), config)
  gen = {"bos_token_id": ids["bos_id"], "eos_token_id": ids["eos_id"],
         "pad_token_id": ids["eos_id"] if ids["pad_id"] is None else ids["pad_id"]}
  if tok.own < len(tok.rows):  # pieces the source never trained on: never sampled, as in the run
    gen["suppress_tokens"] = list(range(tok.own, len(tok.rows)))
  _write_json(os.path.join(out_dir, "generation_config.json"), {**gen, **dict(generation or {})})
  n_params = sum(int(v.size) for v in tensors.values())
  _model_card(tok, variant=variant, source_name=source_name, sources=list(sources) or
              [source_name], n_params=n_params, model_cfg=model_cfg,
              eval_results=eval_results).save(os.path.join(out_dir, "README.md"))
  files += ["config.json", "generation_config.json", "README.md"]
  return {"files": files, "config": config, "num_params": n_params}
