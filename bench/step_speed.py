"""Step speed, side by side in one process: DEPT local step vs a plain JAX training step vs a
PyTorch eager step of the same model, with the machine's matmul peak measured in the same run.

  python bench/step_speed.py [--models tiny,demo] [--repeats 7] [--steps 10]

Every candidate runs `--steps` steps per block; blocks are interleaved (A B C A B C ...) `--repeats`
times and the median block gives the step time, so drift (thermal, other load) hits all alike.
Ratios are of tokens per second (higher = the first is faster).

FLOPs per training token (documented formula, forward + backward = 3x forward):
  6 * (N_matmul + V_rows * D)  +  6 * n_layers * 2 * L * D
  N_matmul = n_layers * (D*(H+2*KV)*hd + H*hd*D + 3*D*F)    (q, k, v, o, gate, up, down)
  V_rows * D: the tied LM head over the padded table; the embedding gather costs no FLOPs;
  attention: QK^T and PV each 2*L*D per token per layer forward, counted for the full L x L
  square that XLA's and torch's reference kernels compute (no causal discount). Norms, RoPE,
  softmax and AdamW are not counted, nor what remat recomputes (MFU, not hardware FLOPs).
MFU = FLOPs per token * tokens per second / peak, the peak being a jitted f32 2048^3 matmul timed as
one more interleaved candidate (median, same conditions as the steps); best-of-5 peaks before and
after are recorded too. Every JAX candidate runs the defaults (f32 on CPU, scanned layers,
remat dots_no_batch, explicit attention) but for the one setting its name says.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# torch's OpenMP workers spin after each op by default; interleaved with XLA's own pool on 2 cores
# that spinning starved the other framework (torch steps went 0.02 s -> 1 s). PASSIVE makes idle
# OpenMP threads sleep; it did not slow torch alone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
from dept_jax import dept, model, optim  # noqa: E402
from dept_jax.mesh import make_mesh  # noqa: E402


def load_config(spec: str):
  name, _, arg = spec.partition(":")
  path = os.path.join(ROOT, "configs", name + ".py")
  mod_spec = importlib.util.spec_from_file_location("cfg_" + name, path)
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  return mod.get_config(arg) if arg else mod.get_config()


def model_setup(name: str):
  """(config, vocab rows, sources): the model, batch and vocabulary the config trains."""
  c = load_config({"tiny": "tiny:spec_opt", "demo": "demo"}.get(name, name))
  c.variant = "spec_opt"
  V = c.data.source_vocab_size
  K = c.data.num_sources
  return c, V, K


def flops_per_token(cfg, V, L) -> float:
  D, H, KV, F = cfg.d_model, cfg.n_heads, model.n_kv_heads(cfg), cfg.d_ff
  hd = model.head_dim(cfg)
  n_matmul = cfg.n_layers * (D * (H + 2 * KV) * hd + H * hd * D + 3 * D * F)
  return 6.0 * (n_matmul + V * D) + 6.0 * cfg.n_layers * 2 * L * D


def matmul_peak(n=2048, dtype=jnp.float32, reps=5) -> float:
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  best = min(_time(lambda: f(a, a).block_until_ready()) for _ in range(reps))
  return 2 * n ** 3 / best


def _time(fn):
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


# ---------------------------------------------------------------------------- candidates


def jax_plain(c, V, B):
  """A plain single-model step: the same loss, AdamW and lr application, no source axis."""
  cfg = c.model
  tx = optim.inner_transform(c.optim)
  params = {"body": model.init_body(cfg, jax.random.key(0)),
            "embed": model.init_embed(cfg, V, jax.random.key(1))}
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, inputs, targets):
    (loss, _), g = jax.value_and_grad(model.loss_fn, has_aux=True)(
        params, {"inputs": inputs, "targets": targets}, V, cfg)
    u, opt = tx.update(g, opt, params)
    return jax.tree.map(lambda p, u: p - 1e-3 * u, params, u), opt, loss
  step = jax.jit(step, donate_argnums=(0, 1))
  rng = np.random.default_rng(0)
  tok = jnp.asarray(rng.integers(0, V, (B, c.seq_len + 1)), jnp.int32)
  inputs, targets = tok[:, :-1], tok[:, 1:]
  state = [params, opt]

  def run(n):
    for _ in range(n):
      state[0], state[1], loss = step(state[0], state[1], inputs, targets)
    loss.block_until_ready()
  return run


def jax_dept(c, V, B, K):
  """The DEPT local step as the trainer runs it: K source slots vmapped on one device."""
  c = c.copy_and_resolve_references()
  c.data.num_sources = K
  mesh = make_mesh({"source": 1, "data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  prog = dept.build(c, mesh, dept.Vocab((V,) * K))
  state = [prog.init(jax.random.key(0))]
  rng = np.random.default_rng(0)
  batch = dept.make_batch(rng.integers(0, V, (K, B, c.seq_len + 1)),
                          np.repeat(np.arange(K)[:, None], B, 1), [V] * K)
  batch = jax.device_put(batch, prog.batch_shardings)

  def run(n):
    for _ in range(n):
      state[0], m = prog.local_step(state[0], batch)
    m["loss"].block_until_ready()
  return run


def torch_eager(c, V, B):
  import torch
  import torch_llama
  torch.set_num_threads(os.cpu_count())
  net, step = torch_llama.make_step(c.model, V, V, c.seq_len)
  g = torch.Generator().manual_seed(0)
  tok = torch.randint(0, V, (B, c.seq_len + 1), generator=g)
  inputs, targets = tok[:, :-1].contiguous(), tok[:, 1:].contiguous()

  def run(n):
    for _ in range(n):
      step(inputs, targets)
  return run


def interleave(cands: dict, steps: int, repeats: int, pick=statistics.median) -> dict:
  """Seconds per step of each candidate, blocks interleaved A B C ... `repeats` times: pick(blocks)
  per candidate, or every block's time with pick=None."""
  for run in cands.values():  # compile / warm up
    run(2)
  times = {k: [] for k in cands}
  for _ in range(repeats):
    for k, run in cands.items():
      times[k].append(_time(lambda: run(steps)) / steps)
  return times if pick is None else {k: pick(v) for k, v in times.items()}


def variant(c, **model_overrides):
  c = c.copy_and_resolve_references()
  c.model.update(**model_overrides)
  return c


def unrolled(c):
  return variant(c, scan_layers=False)


def vmapped(c):
  """Before the slot loop: the K sources on one device batched by vmap (local_slots=vmap)."""
  c = c.copy_and_resolve_references()
  c.local_slots = "vmap"
  return c


def matmul_run(n=2048):
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)

  def run(k):
    for _ in range(k):
      out = f(a, a)
    out.block_until_ready()
  return run


def bench_model(name, steps, repeats):
  c, V, K = model_setup(name)
  c.model.dtype = "float32" if c.model.dtype == "auto" else c.model.dtype  # CPU default
  B, L = c.batch_size, c.seq_len
  fpt = flops_per_token(c.model, V, L)
  cands = {"jax_plain": jax_plain(c, V, B), "dept_1src": jax_dept(c, V, B, 1),
           f"dept_{K}src": jax_dept(c, V, B, K), "torch_eager": torch_eager(c, V, B),
           "jax_plain_no_remat": jax_plain(variant(c, remat="none"), V, B),
           "jax_plain_xla_attention": jax_plain(variant(c, attention="xla"), V, B),
           "jax_plain_unrolled": jax_plain(unrolled(c), V, B),
           "jax_plain_bf16": jax_plain(variant(c, dtype="bfloat16"), V, B),
           f"dept_{K}src_vmap": jax_dept(vmapped(c), V, B, K),
           "matmul_2048": matmul_run()}
  load_before = os.getloadavg()[0]
  sec = interleave(cands, steps, repeats)
  peak = 2 * 2048 ** 3 / sec.pop("matmul_2048")
  del cands["matmul_2048"]
  tokens = {k: B * L * (K if k.startswith(f"dept_{K}src") else 1) for k in cands}
  tps = {k: tokens[k] / sec[k] for k in cands}
  out = {"model": name, "d_model": c.model.d_model, "n_layers": c.model.n_layers,
         "n_heads": c.model.n_heads, "d_ff": c.model.d_ff, "vocab_rows": V, "batch": B,
         "seq_len": L, "sources": K, "dtype": c.model.dtype, "flops_per_token": fpt,
         "peak_gflops_in_run": peak / 1e9,
         "load_avg_1min": [load_before, os.getloadavg()[0]],
         "step_s": sec, "tokens_per_s": tps,
         "mfu": {k: fpt * v / peak for k, v in tps.items()},
         "ratio_dept_vs_plain": tps["dept_1src"] / tps["jax_plain"],
         "ratio_jax_vs_torch": tps["jax_plain"] / tps["torch_eager"],
         "ratio_dept_vs_torch": tps["dept_1src"] / tps["torch_eager"],
         f"ratio_dept_{K}src_vs_torch": tps[f"dept_{K}src"] / tps["torch_eager"],
         "ratio_remat_vs_none": tps["jax_plain"] / tps["jax_plain_no_remat"],
         "ratio_explicit_vs_xla_attention": tps["jax_plain"] / tps["jax_plain_xla_attention"],
         "ratio_unrolled_vs_scan": tps["jax_plain_unrolled"] / tps["jax_plain"],
         "ratio_bf16_vs_f32": tps["jax_plain_bf16"] / tps["jax_plain"],
         f"ratio_dept_{K}src_loop_vs_vmap": tps[f"dept_{K}src"] / tps[f"dept_{K}src_vmap"]}
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--models", default="tiny,demo")
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--repeats", type=int, default=11)
  ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/step_speed.json"))
  args = ap.parse_args()
  peak = matmul_peak()
  peak_bf16 = matmul_peak(dtype=jnp.bfloat16)
  print(json.dumps({"matmul_peak_f32_gflops": peak / 1e9,
                    "matmul_peak_bf16_gflops": peak_bf16 / 1e9}), flush=True)
  rows = []
  for name in args.models.split(","):
    r = bench_model(name, args.steps, args.repeats)
    print(json.dumps(r), flush=True)
    rows.append(r)
  peak_after = matmul_peak()
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"date": datetime.date.today().isoformat(), "jax": jax.__version__,
               "xla_flags": os.environ.get("XLA_FLAGS", ""), "cpus": os.cpu_count(),
               "command": "python " + " ".join(sys.argv),
               "matmul_peak_f32_gflops": peak / 1e9, "matmul_peak_f32_gflops_after": peak_after / 1e9,
               "matmul_peak_bf16_gflops": peak_bf16 / 1e9, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
