"""One function per command-line mode; main.py only parses flags and calls `run`."""
from __future__ import annotations

import json
import os

import jax

from dept_jax.config_lib import ConfigError


def _require(value, flag: str, mode: str):
  if value is None:
    raise ConfigError(f"--mode={mode} needs --{flag}.")
  return value


def init_distributed(flags) -> None:
  """Start JAX's multi-host runtime when more than one process is asked for (explicit flags) or
  the environment describes a cluster (TPU pod workers, SLURM: jax detects these itself)."""
  if flags.num_processes and flags.num_processes > 1:
    jax.distributed.initialize(coordinator_address=flags.coordinator_address,
                               num_processes=flags.num_processes, process_id=flags.process_id)
  elif os.environ.get("DEPT_JAX_DISTRIBUTED") == "1":
    jax.distributed.initialize()


def _enable_compilation_cache():
  path = os.environ.get("DEPT_JAX_COMPILATION_CACHE", os.path.expanduser("~/.cache/dept_jax/xla"))
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def run(mode: str, flags) -> None:
  init_distributed(flags)
  _enable_compilation_cache()
  if mode == "train":
    from dept_jax import report, train
    config = _require(flags.config, "config", mode)
    workdir = _require(flags.workdir, "workdir", mode)
    train.train(config, workdir)
    report.plot(workdir)
  elif mode == "prepare":
    prepare_data(_require(flags.config, "config", mode), flags.workdir)
  elif mode == "study":
    from dept_jax.study import runner
    runner.run(_require(flags.config, "config", mode), _require(flags.workdir, "workdir", mode))
  elif mode == "compile":
    compile_report(_require(flags.config, "config", mode))
  elif mode == "eval":
    evaluate_run(_require(flags.workdir, "workdir", mode), flags.step)
  elif mode == "report":
    from dept_jax import report
    print(report.plot(_require(flags.workdir, "workdir", mode)))
  elif mode == "export":
    from dept_jax import export_run
    export_run.export(_require(flags.workdir, "workdir", mode), _require(flags.source, "source", mode),
                      _require(flags.out, "out", mode), step=flags.step, overwrite=flags.overwrite)
  elif mode == "generate":
    from dept_jax import export_run
    print(export_run.generate_text(
        _require(flags.workdir, "workdir", mode), _require(flags.source, "source", mode),
        flags.prompt, step=flags.step, max_new_tokens=flags.max_new_tokens,
        temperature=flags.temperature, top_k=flags.top_k, top_p=flags.top_p, seed=flags.seed))


def prepare_data(config, workdir: str | None) -> dict:
  """Tokenize every source into the token cache once (checking the shards already there against
  their checksums); training runs, variants and hosts then stream from it."""
  import time

  from dept_jax import config_lib
  from dept_jax.data import cache, text
  config_lib.validate(config, jax.device_count())
  if config.data.kind != "text":
    print(f"[dept_jax] data.kind={config.data.kind} needs no preparation", flush=True)
    return {}
  start = time.perf_counter()
  srcs = text.prepare(config, workdir, verify=True)
  for src in srcs.values():
    print(f"[dept_jax] {cache.describe(src)}", flush=True)
  dirs = sorted({src.cache.dir for src in srcs.values()})
  print(f"[dept_jax] token cache ready in {time.perf_counter() - start:.1f} s: "
        f"{', '.join(dirs)}", flush=True)
  return srcs


def compile_report(config) -> dict:
  """Lower and compile the local and outer steps for the devices present; print memory use."""
  from dept_jax import config_lib, dept, experiment, hlo_comm, variants
  from dept_jax.mesh import make_mesh
  shape = config_lib.validate(config, jax.device_count())
  mesh = make_mesh(shape)
  vocab = experiment.abstract_vocab(config)
  program = dept.build(config, mesh, vocab)
  state = program.abstract_state
  local = program.local_step.lower(state, experiment.abstract_batch(config, program)).compile()
  out = {"mesh": shape, "local_step": _memory(local)}
  if not variants.get(config.variant).mixture:
    S = program.slots
    vec = lambda dt: jax.ShapeDtypeStruct((S,), dt)
    begin = program.begin_round.lower(state, vec("int32")).compile()
    outer = program.outer_step.lower(state, vec("int32"), vec("float32")).compile()
    out["outer_step"] = _memory(outer)
    out["outer_bytes_across_source"] = sum(hlo_comm.cross_source_bytes(f.as_text(), mesh)
                                           for f in (begin, outer))
  print(json.dumps(out, indent=2))
  return out


def _memory(compiled) -> dict:
  m = compiled.memory_analysis()
  if m is None:
    return {}
  keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
          "generated_code_size_in_bytes", "alias_size_in_bytes")
  return {k: int(getattr(m, k)) for k in keys if hasattr(m, k)}


def evaluate_run(workdir: str, step: int | None) -> dict:
  """Evaluate every source of a saved run; prints and writes WORKDIR/eval.json."""
  from dept_jax import evaluation, experiment
  exp, state, got = experiment.load_run(workdir, step)
  ev = evaluation.Evaluator(exp)
  results = ev.run(state, exp.slot_sources(0), after_outer=True)
  out = {"step": got, **results}
  if jax.process_index() == 0:
    path = os.path.join(workdir, "eval.json")
    history = [out]
    if os.path.exists(path):  # keep the training run's history; this evaluation becomes "final"
      with open(path) as f:
        history = json.load(f).get("history") or history
    with open(path, "w") as f:
      json.dump({"final": out, "history": history}, f, indent=2)
  print(json.dumps(out, indent=2))
  return out
