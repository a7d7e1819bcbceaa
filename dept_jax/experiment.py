"""Everything a mode (train, eval, export, compile) needs before its first step: the validated
config, the data, each source's vocabulary, the mesh and the compiled-on-use DEPT program."""
from __future__ import annotations

import dataclasses
import functools

import grain
import jax
import numpy as np

from dept_jax import config_lib, dept, variants
from dept_jax.data import DataBundle, build_data, feed, temperature_probs
from dept_jax.mesh import make_mesh


@dataclasses.dataclass
class Experiment:
  config: object
  data: DataBundle
  vocab: dept.Vocab
  mesh: object
  program: dept.Program
  names: list  # source names, fixed order
  _batch_fn: object = None

  @property
  def num_sources(self) -> int:
    return len(self.names)

  @property
  def rules(self) -> variants.Variant:
    return variants.get(self.config.variant)

  def slot_sources(self, round_index: int) -> np.ndarray:
    """S_t: which source each slot trains in this round (all sources, or a seeded random subset)."""
    if self.rules.mixture:
      return np.zeros((1,), np.int32)
    lay = self.program.layout
    return dept.round_sources(round_index, self.config.seed, lay.sources, lay.slots, lay.slices)

  def outer_weights(self, slot_sources) -> np.ndarray:
    if self.config.outer.weighting == "tokens":
      return np.asarray([self.data.sources[k].train_tokens for k in slot_sources], np.float32)
    return np.ones((len(slot_sources),), np.float32)

  def global_batch_shape(self) -> tuple[int, int]:
    """(slots, rows per slot) of a step's batch; STD's one slot holds every source's share."""
    c = self.config
    return self.program.slots, c.batch_size * (self.num_sources if self.rules.mixture else 1)

  def host_batch(self, step: int) -> dict:
    """This host's block of step `step`'s batch (numpy); it depends only on the step."""
    if self._batch_fn is None:
      c = self.config
      S, B = self.global_batch_shape()
      box = feed.host_box(self.program.batch_shardings["inputs"], (S, B, c.seq_len))
      if self.rules.mixture:
        self._batch_fn = functools.partial(feed.mixture_batch, std_mixture(self.data, c),
                                           self.vocab.sizes[0], B, box)
      else:
        schedule = feed.Schedule(self.slot_sources, self.num_sources, c.local_steps, c.steps)
        self._batch_fn = functools.partial(feed.source_batch,
                                           [s.windows for s in self.data.sources], schedule,
                                           self.vocab.sizes, B, box)
    return self._batch_fn(step)

  def batch(self, step: int) -> dict:
    """Step `step`'s batch as device arrays (unprefetched: for tests and tools)."""
    return self.to_device(self.host_batch(step))

  def batches(self, start_step: int):
    """Host blocks of every step's batch from start_step on, built ahead by grain threads while
    the device runs (nothing to restore on resume: a batch depends only on its step)."""
    c = self.config
    return feed.prefetched(self.host_batch, start_step, c.steps,
                           int(c.data.get("read_threads", 2)), int(c.data.get("prefetch", 4)))

  def to_device(self, host_batch: dict) -> dict:
    """Host block -> global arrays laid out by the step's batch shardings (each process gives
    only the rows its own devices hold)."""
    S, B = self.global_batch_shape()
    shapes = {"inputs": (S, B, self.config.seq_len), "targets": (S, B, self.config.seq_len),
              "source_ids": (S, B), "vocab_size": (S,)}
    sh = self.program.batch_shardings
    return {k: jax.make_array_from_process_local_data(sh[k], v, shapes[k])
            for k, v in host_batch.items()}


def std_mixture(data: DataBundle, config):
  """STD's stream: every source's windows (global ids) interleaved in proportion to
  (weight x tokens) ** temperature, each row with its source."""
  sizes = [s.train_tokens * s.weight for s in data.sources]
  probs = temperature_probs(sizes, config.data.temperature)
  return grain.MapDataset.mix(
      [w.map(functools.partial(_with_source, k)) for k, w in enumerate(data.global_windows)],
      weights=list(probs))


def _with_source(k, window):
  return window, k


def vocab_for(variant: str, data: DataBundle) -> dept.Vocab:
  sizes = tuple(int(s.vocab_size) for s in data.sources)
  rules = variants.get(variant)
  if rules.mixture:
    return dept.Vocab((int(data.global_vocab_size),), None, data.global_vocab_size)
  if rules.table.in_global:
    return dept.Vocab(sizes, data.local_to_global, data.global_vocab_size)
  return dept.Vocab(sizes)


def setup(config, workdir: str | None, devices=None, training: bool = True) -> Experiment:
  """training=False (eval, export, generate): a text run's data comes from its own record."""
  devices = devices if devices is not None else jax.devices()
  # The cheap checks first: a bad key fails before any data is read or anything compiles.
  config_lib.validate(config, len(devices))
  data = build_data(config, workdir, training)
  if len(data.sources) != config.data.num_sources:
    raise config_lib.ConfigError(
        f"config.data.num_sources is {config.data.num_sources} but the data has "
        f"{len(data.sources)} sources ({', '.join(data.names)}). Fix: set data.num_sources="
        f"{len(data.sources)}.")
  if variants.get(config.variant).mixture and data.global_windows is None:
    raise config_lib.ConfigError(f"variant {config.variant} needs the sources in global-tokenizer "
                                 "ids; this data kind does not provide them. Fix: use another "
                                 "variant.")
  shape = config_lib.validate(config, len(devices), len(data.sources))
  mesh = make_mesh(shape, devices)
  vocab = vocab_for(config.variant, data)
  program = dept.build(config, mesh, vocab, metric_sources=len(data.sources))
  return Experiment(config, data, vocab, mesh, program, data.names)


def abstract_vocab(config) -> dept.Vocab:
  """Vocabulary shapes from the config alone, for AOT checks of presets whose data is elsewhere."""
  K, G = config.data.num_sources, config.data.vocab_size
  rules = variants.get(config.variant)
  if rules.mixture:
    return dept.Vocab((G,), None, G)
  if rules.vocabulary == "own":
    return dept.Vocab((config.data.source_vocab_size,) * K)
  if rules.table.in_global:
    return dept.Vocab((G,) * K, np.tile(np.arange(G, dtype=np.int32), (K, 1)), G)
  return dept.Vocab((G,) * K)


def abstract_batch(config, program) -> dict:
  S = program.slots
  B = config.batch_size * (config.data.num_sources if variants.get(config.variant).mixture else 1)
  L = config.seq_len
  sds = lambda name, *shape: jax.ShapeDtypeStruct(shape, np.int32,
                                                  sharding=program.batch_shardings[name])
  return {"inputs": sds("inputs", S, B, L), "targets": sds("targets", S, B, L),
          "source_ids": sds("source_ids", S, B), "vocab_size": sds("vocab_size", S)}


def load_run(workdir: str, step: int | None = None, devices=None):
  """A trained run's (experiment, state, step) from WORKDIR/config.json and its checkpoints.

  The public way for eval, export and generation to read a run; restoring goes through abstract
  targets with this machine's shardings, so any device count that fits the mesh works.
  """
  import json
  import os

  import ml_collections

  from dept_jax.checkpoint import Checkpointer
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {workdir} is not a dept_jax run directory. "
                            "Fix: pass the --workdir of a training run.")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  exp = setup(config, workdir, devices, training=False)
  ckpt = Checkpointer(workdir, config.checkpoint)
  got, state, _, _ = ckpt.restore(exp.program.abstract_state, step)
  ckpt.close()
  return exp, state, got
