"""The default config every configs/*.py file starts from, and the checks run before anything compiles.

Keys people reach for sit at the top: variant, steps (total local steps), local_steps (N),
batch_size (per source), seq_len, seed. Everything else is grouped by what it configures.
"""
from __future__ import annotations

import math

import ml_collections

OUTER_OPTIMIZERS = ("fedavg", "nesterov")
MESH_AXES = ("source", "data", "fsdp", "tensor")


# STD baselines at the paper's mixture temperatures: tau=0 samples every source equally often,
# tau=1 in proportion to its size (plain 'std' uses data.temperature, 0.3 by default).
STD_PRESETS = {"std_tau0": 0.0, "std_tau1": 1.0}


class ConfigError(ValueError):
  """A config that cannot run; the message names the key to change."""


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.variant = "spec"
  c.steps = 200  # total local steps of every source (the whole run)
  c.local_steps = 50  # N: local steps per round
  c.batch_size = 8  # sequences per source per step (STD: per source share of the global batch)
  c.seq_len = 64
  c.seed = 0

  c.model = ml_collections.ConfigDict(dict(
      d_model=64, n_layers=2, n_heads=4, n_kv_heads=0, d_ff=172, rope_theta=10000.0,
      norm_eps=1e-5, tie_embeddings=True, init_std=0.02,
      # Embedding tables get rows for a multiple of this many ids, whatever the tokenizer's size
      # (50,257 -> 50,304): 128 fills TPU lanes and GPU tensor-core tiles. Extra rows are masked
      # out of the softmax and never sampled.
      vocab_multiple=128,
      dtype="auto",  # compute dtype (auto: bfloat16 on TPU/GPU, float32 on CPU); params stay f32
      # The backward pass recomputes everything but the projections' matmul outputs: far fewer
      # per-layer residuals to stack (the demo step 1.4x faster on CPU, bench/RESULTS.md).
      # none | full | dots | dots_no_batch
      remat="dots_no_batch",
      scan_layers=True,
      attention="auto",  # auto (cuDNN on GPU, explicit elsewhere) | explicit | xla | cudnn
  ))
  c.optim = ml_collections.ConfigDict(dict(
      lr=3e-3, warmup_steps=20, final_lr_frac=0.1, b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=0.0, grad_clip=1.0,
  ))
  c.outer = ml_collections.ConfigDict(dict(
      optimizer="fedavg",  # fedavg (lr 1, no momentum: the paper) | nesterov (DiLoCo)
      lr=0.7, momentum=0.9,  # used by nesterov only; fedavg is always lr 1, no momentum
      weighting="equal",  # equal | tokens (weight each source by its training tokens)
      reset_inner_state=False,  # True: fresh AdamW moments every round (Photon); False keeps them
      sources_per_round=0,  # 0 = every source every round; else S_t sampled each round
  ))
  # Mesh axis sizes; -1 fills from the devices present. source=-1 means one slice per source
  # taking part in a round (one for STD).
  c.mesh = ml_collections.ConfigDict(dict(source=-1, data=-1, fsdp=1, tensor=1))
  c.data = ml_collections.ConfigDict(dict(
      kind="synthetic",
      num_sources=4,
      vocab_size=256,  # global tokenizer size (std/glob/trim/spec)
      source_vocab_size=192,  # per-source tokenizer size (spec_opt)
      temperature=0.3,  # STD mixture: p_k proportional to n_k ** temperature
      eval_batches=4,
  ))
  # Continued pre-training: start from a trained run's global body (fresh tables for this run's
  # sources, e.g. a new language), optionally keeping the body frozen.
  c.init_from = ml_collections.ConfigDict(dict(workdir="", step=-1))
  c.freeze_body = False
  # Several sources sharing one source slice (e.g. every source on one CPU): train them one after
  # another inside the step (loop; 1.3-1.5x faster on CPU) or batched into one vmap (vmap).
  c.local_slots = "loop"
  c.on_nonfinite = "stop"  # stop: save the last good state and raise | skip: drop the update, count it
  c.eval = ml_collections.ConfigDict(dict(
      every=0,  # also evaluate the local models every E steps (0: only after each outer step)
  ))
  c.checkpoint = ml_collections.ConfigDict(dict(
      every=0,  # save every K steps (0: only at round ends and at the end)
      at_round_end=True,
      keep=3,  # keep the last k ...
      keep_every=0,  # ... plus every n-th step for good (0: none)
      async_save=True,
      fallback=False,  # a damaged latest checkpoint: fall back to the previous good one
  ))
  c.log = ml_collections.ConfigDict(dict(
      every=10, progress=True, tensorboard=True,
      wandb="",  # '' (off) | offline (a local run in WORKDIR/wandb, no network) | online
      wandb_project="dept_jax", wandb_group="", wandb_name="",  # name '' = the workdir's name
  ))
  return c


def _fail(key: str, problem: str, fix: str):
  raise ConfigError(f"config.{key}: {problem}. Fix: {fix}.")


def variant_names() -> tuple[str, ...]:
  from dept_jax import variants  # local import: keep config loading light
  return tuple(variants.VARIANTS)


def resolve_variant(name: str) -> tuple[str, float | None]:
  """A variant or STD preset name -> (variant, the data.temperature it sets, or None)."""
  if name in STD_PRESETS:
    return "std", STD_PRESETS[name]
  if name not in variant_names():
    _fail("variant", f"unknown variant '{name}'",
          f"choose one of {variant_names() + tuple(STD_PRESETS)}")
  return name, None


def set_variant(config, name: str):
  """config.variant (and, for an STD preset, data.temperature) from a variant or preset name."""
  config.variant, temperature = resolve_variant(name)
  if temperature is not None:
    config.data.temperature = temperature
  return config


def _rules(config):
  from dept_jax import variants
  return variants.get(config.variant)


def num_slots(config, n_sources: int) -> int:
  """How many sources train at once (the `source` mesh axis size)."""
  if _rules(config).mixture:
    return 1
  if config.outer.sources_per_round:
    return config.outer.sources_per_round
  return n_sources


def banked(config, n_sources: int) -> bool:
  """Fewer slots than sources: each source's state waits in a bank while it sits a round out."""
  return num_slots(config, n_sources) < n_sources


def resolve_mesh_shape(config, n_devices: int, n_sources: int) -> dict:
  shape = dict(config.mesh)
  for axis in shape:
    if axis not in MESH_AXES:
      _fail(f"mesh.{axis}", f"unknown mesh axis '{axis}'", f"use only {MESH_AXES}")
  slots = num_slots(config, n_sources)
  # With a bank, every slice keeps an equal share of the sources (and trains only those), so the
  # slice count must divide the sources too.
  bank_sources = n_sources if banked(config, n_sources) else slots
  if shape["source"] == -1:
    # As many source slices as fit: a divisor of the slots, the banked sources and the devices.
    # Several sources may share a slice (one laptop CPU runs all of them); they still never
    # communicate.
    shape["source"] = max(m for m in range(1, slots + 1)
                          if slots % m == 0 and bank_sources % m == 0 and n_devices % m == 0)
  if shape["source"] <= 0 or slots % shape["source"]:
    _fail("mesh.source", f"{shape['source']} source slices cannot split the {slots} sources "
          "that train per round", "leave mesh.source=-1, or use a divisor of the sources per round")
  if bank_sources % shape["source"]:
    _fail("mesh.source", f"{shape['source']} source slices cannot each keep an equal share of "
          f"the {n_sources} sources' banks", f"leave mesh.source=-1, or use a divisor of both "
          f"{slots} and {n_sources}")
  fixed = 1
  for axis in MESH_AXES:
    if shape[axis] != -1:
      if shape[axis] <= 0:
        _fail(f"mesh.{axis}", f"size {shape[axis]} is not positive", "use -1 or a positive size")
      fixed *= shape[axis]
  free = [a for a in MESH_AXES if shape[a] == -1]
  if len(free) > 1:
    _fail(f"mesh.{free[1]}", "only one mesh axis may be -1", "give the other axes sizes")
  if free:
    if n_devices % fixed:
      _fail(f"mesh.{free[0]}", f"{n_devices} devices do not divide into {fixed} "
            f"({', '.join(f'{a}={shape[a]}' for a in MESH_AXES if shape[a] != -1)})",
            f"use a device count that is a multiple of {fixed}, or fewer sources per round")
    shape[free[0]] = n_devices // fixed
  total = 1
  for axis in MESH_AXES:
    total *= shape[axis]
  if total != n_devices:
    _fail("mesh", f"mesh {shape} needs {total} devices but {n_devices} are present",
          "make the product of the mesh axes equal the device count (or set one axis to -1)")
  return shape


def _float_leaves(tree, prefix=""):
  for k, v in tree.items():
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      yield from _float_leaves(v, f"{prefix}{k}.")
    elif isinstance(v, float):
      yield f"{prefix}{k}", v


def validate(config, n_devices: int, n_sources: int | None = None) -> dict:
  """Check everything that can be checked without compiling. Returns the resolved mesh shape."""
  for key, v in _float_leaves(config):
    if not math.isfinite(v):
      _fail(key, f"{v} is not a finite number", "set a finite value")
  if config.variant not in variant_names():
    _fail("variant", f"unknown variant '{config.variant}'", f"choose one of {variant_names()}")
  for key in ("steps", "local_steps", "batch_size", "seq_len"):
    if int(config[key]) <= 0:
      _fail(key, f"must be positive, got {config[key]}", "set a positive integer")
  mixture = _rules(config).mixture
  if not mixture and config.steps % config.local_steps:
    _fail("local_steps", f"steps={config.steps} is not a whole number of rounds of "
          f"local_steps={config.local_steps}", "make steps a multiple of local_steps")
  m = config.model
  for key in ("d_model", "n_layers", "n_heads", "d_ff", "vocab_multiple"):
    if int(m[key]) <= 0:
      _fail(f"model.{key}", f"must be positive, got {m[key]}", "set a positive integer")
  if m.d_model % m.n_heads:
    _fail("model.n_heads", f"d_model={m.d_model} is not divisible by n_heads={m.n_heads}",
          "pick n_heads that divides d_model")
  if (m.d_model // m.n_heads) % 2:
    _fail("model.n_heads", f"head dim {m.d_model // m.n_heads} is odd; RoPE needs it even",
          "pick n_heads so that d_model / n_heads is even")
  kv = m.n_kv_heads if m.n_kv_heads > 0 else m.n_heads
  if m.n_heads % kv:
    _fail("model.n_kv_heads", f"n_heads={m.n_heads} is not divisible by n_kv_heads={kv}",
          "pick n_kv_heads that divides n_heads")
  from dept_jax.model import REMAT_POLICIES  # local import: keep config loading light
  if m.remat not in REMAT_POLICIES:
    _fail("model.remat", f"unknown remat policy '{m.remat}'", f"choose one of {list(REMAT_POLICIES)}")
  if m.attention not in ("auto", "explicit", "xla", "cudnn"):
    _fail("model.attention", f"unknown attention '{m.attention}'",
          "choose auto, explicit, xla or cudnn")
  if m.dtype not in ("auto", "float32", "bfloat16", "float16"):
    _fail("model.dtype", f"unsupported compute dtype '{m.dtype}'",
          "use auto, float32, bfloat16 or float16")
  if config.get("local_slots", "loop") not in ("loop", "vmap"):
    _fail("local_slots", f"unknown '{config.local_slots}'", "choose loop or vmap")
  for key in ("every",):
    if int(config.log[key]) <= 0:
      _fail(f"log.{key}", f"must be positive, got {config.log[key]}", "log every 1 or more steps")
  from dept_jax import wandb_log
  wandb_log.check(config.log)
  if config.on_nonfinite not in ("stop", "skip"):
    _fail("on_nonfinite", f"unknown policy '{config.on_nonfinite}'", "choose stop or skip")
  o = config.outer
  if o.optimizer not in OUTER_OPTIMIZERS:
    _fail("outer.optimizer", f"unknown outer optimizer '{o.optimizer}'",
          f"choose one of {OUTER_OPTIMIZERS}")
  if o.weighting not in ("equal", "tokens"):
    _fail("outer.weighting", f"unknown weighting '{o.weighting}'", "choose equal or tokens")
  if not config.optim.lr > 0:
    _fail("optim.lr", f"learning rate must be positive, got {config.optim.lr}",
          "set a positive optim.lr (e.g. 3e-3)")
  if config.optim.warmup_steps < 0:
    _fail("optim.warmup_steps", f"must be >= 0, got {config.optim.warmup_steps}",
          "set 0 (no warmup) or a positive number of steps")
  for key, zero in (("checkpoint.every", "off"), ("checkpoint.keep", "keep all"),
                    ("checkpoint.keep_every", "off"), ("eval.every", "off")):
    group, name = key.split(".")
    if int(config[group][name]) < 0:
      _fail(key, f"must be >= 0, got {config[group][name]}", f"use 0 ({zero}) or a positive number")
  n_sources = n_sources if n_sources is not None else config.data.num_sources
  if n_sources <= 0:
    _fail("data", "no data sources configured", "add at least one source")
  if config.data.kind == "text":
    from dept_jax.data.text import check_config  # local import: keep config loading light
    check_config(config.data)
  if o.sources_per_round < 0 or o.sources_per_round > n_sources:
    _fail("outer.sources_per_round", f"{o.sources_per_round} is not in 0..{n_sources}",
          f"use 0 (all) or at most the {n_sources} sources")
  mesh = resolve_mesh_shape(config, n_devices, n_sources)
  per_slice = mesh["data"] * mesh["fsdp"]
  batch = config.batch_size * (n_sources if mixture else 1)
  if batch % per_slice:
    key = "batch_size"
    _fail(key, f"batch {batch} per source slice is not divisible by data*fsdp={per_slice}",
          f"make batch_size a multiple of {per_slice} (or change mesh.data/mesh.fsdp)")
  if m.n_heads % mesh["tensor"] or kv % mesh["tensor"] or m.d_ff % mesh["tensor"]:
    _fail("mesh.tensor", f"heads ({m.n_heads}, kv {kv}) or d_ff ({m.d_ff}) not divisible by "
          f"tensor={mesh['tensor']}", "pick a tensor size dividing n_heads, n_kv_heads and d_ff")
  if m.d_model % mesh["fsdp"]:
    _fail("mesh.fsdp", f"d_model={m.d_model} not divisible by fsdp={mesh['fsdp']}",
          "pick an fsdp size dividing d_model")
  return mesh
