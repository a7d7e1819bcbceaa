"""Per-step, per-host training batches, prefetched by grain while the device runs.

The global batch of step t is a pure function of t: slot s trains source k = slot_sources(t)[s] on
rows p*B .. p*B + B - 1 of k's window dataset, where p counts the earlier steps in which k trained
(STD: rows t*B .. t*B + B - 1 of the mixture). Each host builds only the block of that batch its
own devices hold (its `box`), so hosts read disjoint windows that together cover each epoch once,
and resuming at step t needs no saved reader state.
"""
from __future__ import annotations

import numpy as np


def host_box(sharding, global_shape) -> tuple[slice, ...]:
  """The block of a global array this process's devices hold, as one slice per dimension."""
  blocks = list(sharding.addressable_devices_indices_map(tuple(global_shape)).values())
  box = []
  for d, size in enumerate(global_shape):
    starts = [b[d].start or 0 for b in blocks]
    stops = [size if b[d].stop is None else b[d].stop for b in blocks]
    box.append(slice(min(starts), max(stops)))
  mask = np.zeros(tuple(global_shape[:2]), bool)
  for b in blocks:
    mask[b[0], b[1]] = True
  if not mask[box[0], box[1]].all():  # not a rectangle: the per-host read would be wrong
    raise ValueError(f"this host's devices hold a non-rectangular part of the batch {box}; use "
                     "a mesh whose `source` and data axes follow the device order")
  return tuple(box)


class Schedule:
  """Which source trains in each slot at step t, and how many steps it trained before t."""

  def __init__(self, slot_sources_fn, num_sources: int, local_steps: int, total_steps: int):
    self.slot_sources_fn, self.N = slot_sources_fn, local_steps
    rounds = -(-total_steps // local_steps) + 1
    took = np.zeros((rounds + 1, num_sources), np.int64)
    for r in range(rounds):
      took[r + 1] = took[r]
      took[r + 1, slot_sources_fn(r)] += 1
    self.rounds_before = took  # [r, k]: rounds before r in which k trained

  def slot_sources(self, step: int) -> np.ndarray:
    return np.asarray(self.slot_sources_fn(step // self.N))

  def steps_before(self, k: int, step: int) -> int:
    r = step // self.N
    return int(self.rounds_before[r, k]) * self.N + step - r * self.N


def source_batch(windows, schedule: Schedule, vocab_sizes, batch_size: int, box, step: int):
  """This host's block of step `step`'s DEPT batch (one source per slot)."""
  slots = schedule.slot_sources(step)[box[0]]
  rows = range(box[1].start, box[1].stop)
  tokens = np.stack([
      np.stack([windows[k][schedule.steps_before(k, step) * batch_size + j] for j in rows])
      for k in slots])
  ids = np.repeat(slots[:, None], len(rows), axis=1)
  return _batch(tokens, ids, np.asarray([vocab_sizes[k] for k in slots], np.int32))


def mixture_batch(mixture, vocab_size: int, rows_per_step: int, box, step: int):
  """This host's block of step `step`'s STD batch: rows of the mixture, each with its source."""
  got = [mixture[step * rows_per_step + j] for j in range(box[1].start, box[1].stop)]
  tokens = np.stack([w for w, _ in got])[None]
  ids = np.asarray([k for _, k in got], np.int32)[None]
  return _batch(tokens, ids, np.asarray([vocab_size], np.int32))


def _batch(tokens_SxBxL1, ids_SxB, vocab_S) -> dict:
  tokens = tokens_SxBxL1.astype(np.int32)
  return {"inputs": np.maximum(tokens[..., :-1], 0), "targets": tokens[..., 1:],
          "source_ids": ids_SxB.astype(np.int32), "vocab_size": vocab_S}


def prefetched(batch_fn, start: int, stop: int, threads: int, buffer: int):
  """Iterator over batch_fn(t) for t in [start, stop), built ahead by grain's reader threads."""
  import grain
  ds = grain.MapDataset.range(start, stop).map(batch_fn)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                   prefetch_buffer_size=buffer)))
