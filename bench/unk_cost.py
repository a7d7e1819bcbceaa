"""What scoring unowned held-out tokens as <unk> does to TRIM's bits per byte, measured.

TRIM/SPEC trim the global vocabulary to the ids a source's training text uses; a held-out token
outside that set is scored as the source's <unk>. This trains TRIM and GLOB on the built-in corpus
with the same global tokenizer, then on the same held-out text reports per source: how often <unk>
was a training target, the share of unowned eval targets, what TRIM pays at them (mean nats), what
it pays at the other targets, what GLOB (full vocabulary, same tokenizer) pays for the true token
at those same positions, and the bits per byte those targets add.

  python bench/unk_cost.py --steps 200 --workdir /tmp/unk_cost   # -> bench/results/unk_cost.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dept_jax import dept, experiment, model, train  # noqa: E402
from dept_jax.data import text, tokenizers  # noqa: E402


def demo_config(variant: str, steps: int, tokenizer: str = ""):
  import importlib.util
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "demo.py")
  spec = importlib.util.spec_from_file_location("demo", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(variant)
  c.steps = steps
  c.log.progress = False
  c.data.tokenizer = tokenizer
  return c


@jax.jit
def _per_token(body, embed, tokens, vocab_size):
  return model.token_nll(body, embed, tokens[:, :-1], tokens[:, 1:], vocab_size, _CFG)[0]


def per_token_nll(exp, state, k, rows_global, id_map=None):
  """NLL of every target of rows (global ids, -1 padding) under source k's model (TRIM: its ids
  through id_map, global -> local)."""
  rows = rows_global if id_map is None else np.where(
      rows_global >= 0, id_map[np.maximum(rows_global, 0)], -1).astype(np.int32)
  body, embed = dept.source_params(state, exp.config.variant, exp.vocab, k, None)
  out = []
  for i in range(0, len(rows), 8):
    out.append(np.asarray(_per_token(body, embed, jnp.asarray(rows[i:i + 8]),
                                     exp.vocab.sizes[k])))
  return np.concatenate(out)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--workdir", default="/tmp/unk_cost")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                               "unk_cost.json"))
  args = p.parse_args()
  trim_dir, glob_dir = (os.path.join(args.workdir, v) for v in ("trim", "glob"))
  train.train(demo_config("trim", args.steps), trim_dir)
  train.train(demo_config("glob", args.steps, os.path.join(trim_dir, "tokenizers", "global.model")),
              glob_dir)
  trim, trim_state, _ = experiment.load_run(trim_dir)
  glob, glob_state, _ = experiment.load_run(glob_dir)
  global _CFG
  _CFG = model.static_config(trim.config.model)
  out = {"steps": args.steps, "sources": {}}
  caches = text.prepare(trim.config, trim_dir)  # the token cache: each source's id histogram
  for k, name in enumerate(trim.names):
    tok = tokenizers.load(trim.data.tokenizers[name])
    size = trim.vocab.sizes[k]
    id_map = text.id_map(trim.data.local_to_global[k, :size], trim.data.global_vocab_size,
                         tok.unknown_id)
    batches = trim.data.global_eval_batches[k]
    rows_global = np.concatenate([b["tokens"] for b in batches])
    targets = rows_global[:, 1:]
    unk_local = id_map[tok.unknown_id]
    counted = targets >= 0
    unowned = counted & (targets != tok.unknown_id) & (id_map[np.maximum(targets, 0)] == unk_local)
    nll_trim = per_token_nll(trim, trim_state, k, rows_global, id_map)
    nll_glob = per_token_nll(glob, glob_state, k, rows_global)
    n_bytes = float(sum(b["bytes"] for b in batches))
    res = {
        "unk_training_targets": int(caches[name].counts[tok.unknown_id]),
        "training_tokens": caches[name].train_tokens,
        "owned_ids": int(size),
        "eval_targets": int(counted.sum()),
        "unowned_targets": int(unowned.sum()),
        "unowned_rate": float(unowned.sum() / counted.sum()),
        "trim_nats_at_unowned": float(nll_trim[unowned].mean()) if unowned.any() else None,
        "trim_nats_at_owned": float(nll_trim[counted & ~unowned].mean()),
        "glob_nats_at_unowned": float(nll_glob[unowned].mean()) if unowned.any() else None,
        "ln_owned_vocab": math.log(size),
        "trim_bpb": float(nll_trim[counted].sum() / (n_bytes * math.log(2))),
        "trim_bpb_from_unowned": float(nll_trim[unowned].sum() / (n_bytes * math.log(2))),
        "glob_bpb": float(nll_glob[counted].sum() / (n_bytes * math.log(2))),
        # TRIM's bits per byte had the unowned targets cost what GLOB pays for the true token.
        "trim_bpb_if_unowned_cost_as_glob": float(
            (nll_trim[counted & ~unowned].sum() + nll_glob[unowned].sum())
            / (n_bytes * math.log(2))),
    }
    out["sources"][name] = res
    print(name, json.dumps(res), flush=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
