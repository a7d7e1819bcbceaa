"""The training loop: rounds of local steps and outer steps, with eval, logging and checkpoints.

Order of events per step: (round start) -> local step -> (outer step) -> metrics of the previous
step (NaN check) -> (eval) -> log -> checkpoint -> preemption check. One local step stays in
flight between them. All math lives in dept.py; this file only sequences it.
"""
from __future__ import annotations

import json
import signal
import time

import jax
import numpy as np

from dept_jax import config_lib, dept, evaluation, experiment, hlo_comm, metrics_io, run_dir
from dept_jax.checkpoint import Checkpointer


class NonFiniteLossError(RuntimeError):
  """A source's loss or gradient became NaN/inf; the message says where and what was saved."""


class _Preemption:
  """SIGTERM/SIGINT set a flag; the loop finishes the step, saves and exits cleanly."""

  def __init__(self):
    self.signal = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. under some test runners)
        pass
    return self

  def _handle(self, signum, frame):
    self.signal = signal.Signals(signum).name

  def agreed(self) -> bool:
    """Whether to stop now. With several processes a signal may reach only some of them, and
    saving is collective: every process stops if any got one."""
    if jax.process_count() == 1:
      return self.signal is not None
    from jax.experimental import multihost_utils
    got = multihost_utils.process_allgather(np.int32(self.signal is not None))
    if got.any() and self.signal is None:
      self.signal = "preemption (signal on another host)"
    return bool(got.any())

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def run_meta(exp) -> dict:
  c = exp.config
  return {"variant": c.variant, "sources": exp.names, "vocab_sizes": list(exp.vocab.sizes),
          "global_vocab_size": exp.vocab.global_size, "model": c.model.to_dict(),
          "tokenizers": dict(exp.data.tokenizers), "config": json.loads(c.to_json())}


def data_state(exp, acc=None) -> dict:
  """Host-side state saved beside the arrays. The data position is the step itself (a step's
  batch depends only on the step); what is saved is the partial logging interval, so a resumed
  run logs exactly the numbers an uninterrupted one would."""
  out = {"sources": list(exp.names)}
  if acc is not None:
    out["log_accumulator"] = acc.get_state()
  return out


def set_data_state(exp, state: dict, acc=None):
  if acc is not None and "log_accumulator" in state:
    acc.set_state(state["log_accumulator"])


def host_get(tree):
  """device_get that also works for arrays sharded over other hosts' devices (gathered; every
  process must call it at the same point)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_replicated:
      return multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)
  return jax.tree.map(one, tree)


def train(config, workdir: str) -> dict:
  """Train (or resume) the run in workdir. One writer at a time: the workdir is locked, and a
  workdir that holds checkpoints only resumes with the settings it was trained with (run_dir)."""
  config_lib.validate(config, jax.device_count())  # a bad key fails before the workdir is touched
  with run_dir.exclusive(workdir):
    run_dir.bind_config(config, workdir)
    return _train(config, workdir)


def _train(config, workdir: str) -> dict:
  t_start = time.perf_counter()
  exp = experiment.setup(config, workdir)
  setup_s = time.perf_counter() - t_start
  c, prog = exp.config, exp.program
  mixture = exp.rules.mixture  # one model on the mixture: no rounds, no outer step
  N = c.local_steps

  # ---------------------------------------------------------------- state: resume or init
  ckpt = Checkpointer(workdir, c.checkpoint)
  acc = _Accumulator(exp.names)
  evaluator = evaluation.Evaluator(exp)
  if ckpt.latest_step() is not None:
    step, state, dstate, _ = ckpt.restore(prog.abstract_state, set_aside_damaged=True)
    set_data_state(exp, dstate, acc)
    evaluator.load_history(workdir, step)
    print(f"[dept_jax] resumed from step {step} ({ckpt.directory})", flush=True)
  else:
    state = prog.init(jax.random.key(c.seed))
    if c.init_from.workdir:
      state = start_from_trained_body(exp, state, c.init_from.workdir, c.init_from.step)
  step = int(jax.device_get(state["step"]))

  writer = metrics_io.MetricsWriter(workdir, c.steps, step, tensorboard=c.log.tensorboard,
                                    progress=c.log.progress, config=c)
  round_fns = None  # (begin_round, outer_step, bytes across `source` per round), compiled once
  timer = metrics_io.StepTimer()
  tokens_per_step = c.batch_size * c.seq_len * (exp.num_sources if mixture else prog.slots)
  summary, last = {}, {}
  # One local step stays in flight: its metrics are read after the next step (and the round's
  # outer step) is dispatched, so the host prepares the next batch while the device runs. Every
  # log, eval, checkpoint and stop first settles the step in flight.
  in_flight = None

  def settle():
    """Read the step in flight's metrics (waits for it), count them, and act on a non-finite
    loss: the state now is the one after `step` (the bad update was not applied)."""
    nonlocal in_flight, last
    if in_flight is None:
      return
    done_step, rnd, slot_sources, m = in_flight
    in_flight = None
    m = host_get({k: m[k] for k in ("loss", "finite", "nll_by_source", "tokens_by_source",
                                    "grad_norm", "lr")})
    timer.tick()
    acc.add(m, slot_sources, mixture)
    last = m
    if not m["finite"].all():
      _on_nonfinite(exp, ckpt, acc, state, step, done_step, rnd, slot_sources, m, writer)
    writer.advance(1, acc.postfix())

  batches = exp.batches(step)
  with _Preemption() as preempt:
    while step < c.steps:
      rnd = step // N
      slot_sources = exp.slot_sources(rnd)
      round_end = not mixture and (step + 1) % N == 0
      if not mixture and round_fns is None:  # also when resuming in the middle of a round
        round_fns = _compile_round(exp, slot_sources)
      if not mixture and step % N == 0:
        state = round_fns[0](state, slot_sources)
      batch = exp.to_device(next(batches))
      state, m = prog.local_step(state, batch)
      step += 1
      if t_start is not None:  # startup is what a user waits for: data, compile, first step
        jax.block_until_ready(m["loss"])
        writer.console(f"[dept_jax] first step done {time.perf_counter() - t_start:.1f} s after "
                       f"start (data and program ready after {setup_s:.1f} s)")
        t_start = None
      om = None
      if round_end:
        state, om = round_fns[1](state, slot_sources, exp.outer_weights(slot_sources))
      settle()  # the previous step; this one is queued behind it
      in_flight = (step, rnd, slot_sources, m)

      every = c.checkpoint.every
      evaluate = (not mixture and round_end) or (mixture and step % N == 0) or (
          c.eval.every and step % c.eval.every == 0)
      log_now = evaluate or step % c.log.every == 0 or step == c.steps
      stop = preempt.agreed()
      save_now = step == c.steps or (every and step % every == 0) or (
          round_end and c.checkpoint.at_round_end) or stop
      if log_now or save_now:
        settle()

      log = {}
      if om is not None:
        log.update({k: float(v) for k, v in host_get(om).items()})
        log["comm/outer_bytes"] = round_fns[2]
        log["comm/outer_payload_bytes"] = dept.outer_payload_bytes(prog)
        log.update(evaluator.run(state, slot_sources, after_outer=True))
      elif mixture and step % N == 0:
        # STD has no rounds; it is evaluated on the schedule of the other variants' outer steps.
        log.update(evaluator.run(state, slot_sources, after_outer=True))
        # What each data-parallel worker all-reduces every step: the gradient of every parameter.
        log["comm/step_payload_bytes"] = _tree_bytes(prog.abstract_state["slots"]["params"])
      elif evaluate:
        log.update(evaluator.run(state, slot_sources, after_outer=mixture))
      if log_now:
        rate = timer.rate()
        log.update(acc.flush())
        log.update({"round": rnd, "lr": float(last["lr"]), "steps_per_sec": rate,
                    "tokens_per_sec": rate * tokens_per_step,
                    "skipped_updates": int(host_get(state["skipped"]).sum())})
        writer.write(step, log)
        if any(k.startswith("eval/") for k in log):
          writer.console(_eval_line(step, log, exp.names))
          evaluator.save(workdir)  # every eval: the history survives a crash
        summary = log

      if save_now:
        ckpt.save(step, state, data_state(exp, acc), run_meta(exp))
      if stop:
        ckpt.close()
        writer.close()
        print(f"[dept_jax] {preempt.signal}: stopped after step {step}; checkpoint saved in "
              f"{ckpt.directory}/{step}. Run the same command again to resume.", flush=True)
        return summary
  ckpt.close()
  writer.close()
  evaluator.save(workdir)
  return summary


def _compile_round(exp, slot_sources):
  """begin_round and outer_step compiled once, and the bytes their collectives move across
  `source` in a round, read from the compiled HLO (bank traffic would show here too)."""
  prog = exp.program
  state = prog.abstract_state
  begin = prog.begin_round.lower(state, slot_sources).compile()
  outer = prog.outer_step.lower(state, slot_sources, exp.outer_weights(slot_sources)).compile()
  moved = sum(hlo_comm.cross_source_bytes(f.as_text(), exp.mesh) for f in (begin, outer))
  return begin, outer, moved


def start_from_trained_body(exp, state, parent_workdir: str, parent_step: int):
  """Continued pre-training: the parent run's global body replaces the fresh one; this run's
  tables (new sources, or a new global table) stay freshly initialised."""
  from dept_jax.config_lib import ConfigError
  pexp, parent, got = experiment.load_run(parent_workdir,
                                         None if parent_step < 0 else parent_step)
  body, _ = dept.source_params(parent, pexp.config.variant, pexp.vocab, 0, None)  # STD: its model
  mine = state["global"]["body"]
  mismatch = [jax.tree_util.keystr(p) for (p, a), b in zip(
      jax.tree_util.tree_flatten_with_path(body)[0], jax.tree.leaves(mine)) if a.shape != b.shape]
  if mismatch or jax.tree.structure(body) != jax.tree.structure(mine):
    raise ConfigError(f"config.model: the body of {parent_workdir} (step {got}) does not fit this "
                      f"run's model ({', '.join(mismatch) or 'different layout'}). Fix: use the "
                      "parent run's model settings.")
  body = jax.device_put(jax.device_get(body), exp.program.state_shardings["global"]["body"])
  print(f"[dept_jax] body initialised from {parent_workdir} step {got}", flush=True)
  state = {**state, "global": dict(state["global"], body=body)}
  slots = dict(state["slots"])
  S = exp.program.slots
  stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (S,) + x.shape),
                         jax.device_get(body))
  slots["params"] = dict(slots["params"], body=jax.device_put(
      stacked, exp.program.state_shardings["slots"]["params"]["body"]))
  return dict(state, slots=slots)


def _on_nonfinite(exp, ckpt, acc, state, step, bad_step, rnd, slot_sources, m, writer):
  """Step `bad_step` had some source's loss or gradient not finite; the state is now at `step`
  (the step in flight when the metrics were read, its outer step included). dept.local_step did
  not apply the bad update (the others' were applied), so the state is finite: with
  on_nonfinite=stop it is saved as `step`, data position included, and the run stops."""
  bad = [exp.names[k] if not exp.rules.mixture else "mixture"
         for k, ok in zip(slot_sources, m["finite"]) if not ok]
  where = (f"non-finite loss at step {bad_step} (round {rnd}), source(s) {', '.join(bad)}: "
           f"loss={[float(x) for x in m['loss']]}")
  if exp.config.on_nonfinite == "skip":
    writer.console(f"[dept_jax] {where}; update skipped (on_nonfinite=skip)")
    return
  if step not in ckpt.all_steps():
    ckpt.save(step, state, data_state(exp, acc), run_meta(exp))
  ckpt.close()
  writer.close()
  raise NonFiniteLossError(
      f"{where}. That update was not applied; the last good state (step {step}, every "
      f"parameter finite) is saved in {ckpt.directory}/{step}. Fix: lower optim.lr or raise "
      "optim.warmup_steps and rerun to resume from it, or set on_nonfinite=skip to drop such "
      "updates and go on.")


def _tree_bytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _eval_line(step, log, names):
  parts = []
  for n in names:
    bpb = log.get(f"eval/{n}/bits_per_byte")
    loss = log.get(f"eval/{n}/loss")
    if loss is not None:
      parts.append(f"{n}: loss {loss:.3f} bpb {bpb:.3f}")
  return f"step {step} eval | " + " | ".join(parts)


class _Accumulator:
  """Mean per-source training loss over a logging interval."""

  def __init__(self, names):
    self.names = names
    self.nll = np.zeros(len(names))
    self.tok = np.zeros(len(names))
    self.last = {}

  def add(self, m, slot_sources, std):
    ok = m["finite"][:, None]  # a skipped update's NaN loss stays out of the logged mean
    self.nll += np.where(ok, m["nll_by_source"], 0).sum(0)
    self.tok += np.where(ok, m["tokens_by_source"], 0).sum(0)
    if not std:
      for i, k in enumerate(slot_sources):
        self.last[self.names[k]] = float(m["loss"][i])

  def postfix(self):
    if not self.tok.any():
      return None
    losses = self.nll / np.maximum(self.tok, 1)
    return " ".join(f"{n[:8]} {x:.2f}" for n, x, t in zip(self.names, losses, self.tok) if t)

  def get_state(self):
    return {"nll": self.nll.tolist(), "tok": self.tok.tolist()}

  def set_state(self, state):
    self.nll[:] = state["nll"]
    self.tok[:] = state["tok"]

  def flush(self):
    out = {}
    for n, s, t in zip(self.names, self.nll, self.tok):
      if t:
        out[f"train/{n}/loss"] = float(s / t)
        out[f"train/{n}/tokens"] = int(t)  # target tokens trained on in this interval
    if self.tok.sum():
      out["train/loss"] = float(self.nll.sum() / self.tok.sum())
    self.nll[:] = 0
    self.tok[:] = 0
    return out
