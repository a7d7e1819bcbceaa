"""A study's cells, from its config: arms (variants x grid values) x seeds, every cell at the same
token budget, the STD learning-rate sweep, and the source held out for the OOD evaluation.

A study config is an ordinary training config (the base every cell starts from) plus a `study`
block (`study_block()` holds the defaults and says what each key does).
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import hashlib
import json
import math

import ml_collections

from dept_jax import config_lib, variants
from dept_jax.config_lib import ConfigError

# Keys that do not change how STD trains: a grid over them gives STD arms only once.
STD_IGNORES = ("local_steps", "outer.")
# Keys the study itself sets per cell.
STUDY_OWNED = ("variant", "seed", "steps")


class StudyError(ConfigError):
  """A study config that cannot run; the message names the key and the fix."""


def study_block(**overrides) -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict(dict(
      # Arms: variants (dept_jax.variants.VARIANTS) and STD baselines std_tau0 / std_tau1 (the mixture
      # sampled uniformly / by size; plain 'std' uses data.temperature).
      variants=("std_tau0", "std_tau1", "glob", "trim", "spec", "spec_opt"),
      seeds=(0, 1, 2),
      # Any config keys' values, every combination for every arm: "local_steps=25,50;
      # outer.optimizer=fedavg,nesterov". Keys STD ignores (local_steps, outer.*) do not multiply
      # its arms.
      grid="",
      # Training tokens every cell trains on; 0: steps * sources * batch_size * seq_len of the
      # base config (what STD and DEPT with every source per round consume).
      token_budget=0,
      # The paper's baseline protocol: each swept arm trains at every rate (first seed) and keeps
      # the highest one that finishes without diverging (lr_rule=lowest_bpb: the best final bits
      # per byte instead). lr_sweep_arms: std (STD arms) | all (each arm its own best rate).
      lr_sweep=(),
      lr_sweep_arms="std",
      lr_rule="highest_stable",
      baseline="",  # the arm differences are taken against; '' = the best STD arm
      # Out-of-distribution: this source is left out of training; after it, each cell's body gets
      # a fresh table (and tokenizer) for it, trained ood_steps steps at ood_lr (0: optim.lr).
      holdout="",
      ood_steps=100,
      ood_lr=0.0,
      ood_freeze_body=False,  # True: only the new table trains
      # Accelerators per cell (GPU/TPU): cells run side by side on disjoint devices. 0: each cell
      # gets every device, one cell at a time (always so on CPU).
      devices_per_cell=0,
      isolate=True,  # each cell in its own process (False: in this one, one after another)
  ))
  s.update(overrides)
  return s


# ------------------------------------------------------------------ arms and cells
@dataclasses.dataclass(frozen=True)
class Arm:
  variant: str  # a config_lib variant or an STD preset (std_tau0, std_tau1)
  settings: tuple = ()  # ((dotted key, value), ...) from the grid

  @property
  def name(self) -> str:
    return " ".join([self.variant] + [f"{k}={v}" for k, v in self.settings])

  @property
  def is_std(self) -> bool:
    return config_lib.resolve_variant(self.variant)[0] == "std"


@dataclasses.dataclass
class Cell:
  arm: Arm
  seed: int
  lr: float
  config: ml_collections.ConfigDict  # the resolved training config
  ood: dict | None  # what the OOD stage trains (None: no held-out source)

  @property
  def key(self) -> str:
    """Directory name: the variant, seed and a hash of everything that shapes the result, so
    a changed setting is a new cell and an unchanged one is found again."""
    return f"{self.config.variant}-s{self.seed}-{config_hash(self.config)}"

  @property
  def ood_key(self) -> str:
    return _hash(self.ood)


def config_hash(config) -> str:
  d = json.loads(config.to_json_best_effort())
  for block in ("log", "checkpoint"):  # where results go, not what they are
    d.pop(block, None)
  return _hash(d)


def _hash(obj) -> str:
  return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


# ------------------------------------------------------------------ parsing and checks
def _fail(key: str, problem: str, fix: str):
  raise StudyError(f"config.study.{key}: {problem}. Fix: {fix}.")


def _value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare word: a string value (fedavg, nesterov, ...)


def parse_grid(text: str) -> list[tuple[str, list]]:
  """'a=1,2; b.c=x,y' -> [('a', [1, 2]), ('b.c', ['x', 'y'])]."""
  out = []
  for part in filter(None, (p.strip() for p in text.split(";"))):
    key, eq, values = part.partition("=")
    key = key.strip()
    if not eq or not key or not values.strip():
      _fail("grid", f"'{part}' is not KEY=V1,V2,...", "write e.g. grid='local_steps=25,50'")
    out.append((key, [_value(v.strip()) for v in values.split(",")]))
  return out


def _has_key(config, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def source_names(base) -> list[str]:
  d = base.data
  if d.kind == "text":
    return list(d.sources.keys())
  from dept_jax.data.synthetic import chain_indices
  return [f"source{k}" for k in chain_indices(d)]


def check(config) -> ml_collections.ConfigDict:
  """Everything about the study block that can be checked before any cell runs."""
  if "study" not in config:
    raise StudyError("config.study is missing: --mode=study needs a study config. Fix: use a "
                     "configs/study_*.py file, or add study=dept_jax.study.grid.study_block().")
  s, base = config.study, base_config(config)
  if not s.variants:
    _fail("variants", "no arms", "list variants, e.g. ('std_tau1', 'spec')")
  for v in s.variants:
    try:
      config_lib.resolve_variant(v)
    except ConfigError:
      _fail("variants", f"unknown variant '{v}'",
            f"choose from {config_lib.variant_names() + tuple(config_lib.STD_PRESETS)}")
  if len(set(s.variants)) != len(s.variants):
    _fail("variants", "an arm is listed twice", "list each variant once")
  if not s.seeds or len(set(s.seeds)) != len(s.seeds):
    _fail("seeds", f"{tuple(s.seeds)} is empty or repeats a seed", "list distinct seeds, e.g. (0, 1, 2)")
  for key, values in parse_grid(s.grid):
    if key in STUDY_OWNED:
      _fail("grid", f"'{key}' is set by the study", "use study.variants, study.seeds or "
            "study.token_budget instead")
    if not _has_key(base, key):
      _fail("grid", f"'{key}' is not a config key", "use a dotted key of the base config, "
            "e.g. outer.optimizer")
    if len(set(map(repr, values))) != len(values):
      _fail("grid", f"'{key}' repeats a value", "list each value once")
    if key == "optim.lr" and s.lr_sweep:
      _fail("grid", "optim.lr is in the grid and study.lr_sweep is set", "use one of them")
  if any(not (isinstance(lr, (int, float)) and lr > 0) for lr in s.lr_sweep):
    _fail("lr_sweep", f"{tuple(s.lr_sweep)} holds a rate that is not positive",
          "list positive learning rates")
  if s.lr_sweep_arms not in ("std", "all"):
    _fail("lr_sweep_arms", f"unknown '{s.lr_sweep_arms}'", "choose std or all")
  if s.lr_rule not in ("highest_stable", "lowest_bpb"):
    _fail("lr_rule", f"unknown '{s.lr_rule}'", "choose highest_stable or lowest_bpb")
  for key in ("token_budget", "devices_per_cell", "ood_lr"):
    if s[key] < 0:
      _fail(key, f"must be >= 0, got {s[key]}", "use 0 for the default or a positive value")
  if s.ood_steps <= 0:
    _fail("ood_steps", f"must be positive, got {s.ood_steps}", "give the adaptation some steps")
  names = source_names(base)
  if s.holdout and s.holdout not in names:
    _fail("holdout", f"'{s.holdout}' is not a source ({', '.join(names)})", "name one of them")
  if s.holdout and len(names) < 3:
    _fail("holdout", "holding a source out leaves fewer than two to train on",
          "add sources or clear holdout")
  if s.baseline and s.baseline not in [a.name for a in arms(config)]:
    _fail("baseline", f"'{s.baseline}' is not an arm of this study",
          "leave it empty (the best STD arm) or name an arm as the table prints it")
  return s


def base_config(config) -> ml_collections.ConfigDict:
  """The training config every cell starts from: the study config without its study block."""
  base = copy.deepcopy(config)
  with base.unlocked():
    if "study" in base:
      del base["study"]
  return base


def arms(config) -> list[Arm]:
  s = config.study
  grid = parse_grid(s.grid)
  out = []
  for variant in s.variants:
    std = config_lib.resolve_variant(variant)[0] == "std"
    axes = [(k, vs) for k, vs in grid if not (std and k.startswith(STD_IGNORES))]
    combos = [()]
    for key, values in axes:
      combos = [c + ((key, v),) for c in combos for v in values]
    out += [Arm(variant, c) for c in combos]
  return out


def swept(config, arm: Arm) -> bool:
  s = config.study
  return bool(s.lr_sweep) and (s.lr_sweep_arms == "all" or arm.is_std)


# ------------------------------------------------------------------ one cell's config
def token_budget(config) -> int:
  s, base = config.study, base_config(config)
  if s.token_budget:
    return int(s.token_budget)
  k = len(training_sources(config))
  return base.steps * k * base.batch_size * base.seq_len


def training_sources(config) -> list[str]:
  return [n for n in source_names(base_config(config)) if n != config.study.holdout]


def budget_steps(c, n_sources: int, budget: int) -> int:
  """Steps that train `budget` tokens: STD trains every source's batch each step, DEPT only the
  sources of a round (outer.sources_per_round). Whole rounds of local_steps (STD: its eval
  cadence), so each cell ends on an evaluation; the table reports the tokens really seen."""
  rows = c.batch_size * (n_sources if variants.get(c.variant).mixture else
                         (c.outer.sources_per_round or n_sources))
  steps = math.ceil(budget / (rows * c.seq_len))
  return math.ceil(steps / c.local_steps) * c.local_steps


def _drop_holdout(c, name: str):
  d = c.data
  if d.kind == "text":
    kept = {n: spec for n, spec in d.sources.items() if n != name}
    d.sources = ml_collections.ConfigDict(kept)
    d.num_sources = len(kept)
  else:
    from dept_jax.data.synthetic import chain_indices
    d.chains = tuple(k for k in chain_indices(d) if f"source{k}" != name)
    d.num_sources = len(d.chains)


def ood_spec(config) -> dict | None:
  """What the OOD stage trains, identical for every cell: the held-out source's data and the
  adaptation's optimizer (so every arm's body gets the same adaptation, whatever its own rate)."""
  s, base = config.study, base_config(config)
  if not s.holdout:
    return None
  optim = base.optim.to_dict()
  optim["lr"] = float(s.ood_lr or base.optim.lr)
  optim["warmup_steps"] = min(int(optim["warmup_steps"]), s.ood_steps // 10)
  d = base.data
  if d.kind == "text":
    data = {"kind": "text", "source": d.sources[s.holdout].to_dict()}
  else:
    data = {"kind": "synthetic", "chain": int(s.holdout[len("source"):]),
            "vocab_size": d.vocab_size, "eval_batches": d.eval_batches}
  return {"source": s.holdout, "data": data, "steps": int(s.ood_steps), "optim": optim,
          "freeze_body": bool(s.ood_freeze_body)}


def cell(config, arm: Arm, seed: int, lr: float, group: str = "study") -> Cell:
  """The cell's training config; group names the study (its W&B group)."""
  s = config.study
  c = base_config(config)
  with c.unlocked():
    config_lib.set_variant(c, arm.variant)
    c.optim.lr = float(lr)  # before the grid's settings: a grid over optim.lr wins
    for key, value in arm.settings:
      try:
        c.update_from_flattened_dict({key: value})
      except (TypeError, ValueError) as e:
        _fail("grid", f"{key}={value!r} does not fit the key ({e})", "give a value of its type")
    c.seed = int(seed)
    if s.holdout:
      _drop_holdout(c, s.holdout)
    c.steps = budget_steps(c, len(training_sources(config)), token_budget(config))
    c.log.progress = False  # the study prints one line per cell; logs go to the cell's folder
    if c.log.get("wandb", ""):
      c.log.wandb_group = c.log.wandb_group or group
      c.log.wandb_name = f"{arm.name} lr={lr:g} seed={seed}"
  return Cell(arm, int(seed), float(c.optim.lr), c, ood_spec(config))

