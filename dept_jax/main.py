"""dept_jax command line: parse flags, then hand over to one library function per mode.

  python -m dept_jax.main --config configs/tiny.py:spec --workdir runs/tiny [--config.steps=100]
  python -m dept_jax.main --mode=prepare --config configs/demo.py [--workdir runs/demo]
  python -m dept_jax.main --mode=eval --workdir runs/tiny [--step 200]
  python -m dept_jax.main --mode=compile --config configs/pile_125m.py
  python -m dept_jax.main --mode=study --config configs/study_tiny.py --workdir runs/study_tiny
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from dept_jax import errors
from dept_jax.config_lib import ConfigError

config_flags.DEFINE_config_file("config", None, "An ml_collections config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: config, metrics, checkpoints, tokenizers.")
flags.DEFINE_enum("mode", "train", ["train", "prepare", "eval", "compile", "report", "export",
                                   "generate", "study"], "What to do.")
flags.DEFINE_integer("step", None, "Checkpoint step to read (eval/export/generate); default latest.")
flags.DEFINE_string("source", None, "Source name (export/generate).")
flags.DEFINE_string("out", None, "Output directory (export).")
flags.DEFINE_bool("overwrite", False, "Export into a folder that already holds a model.")
flags.DEFINE_string("prompt", "", "Prompt text (generate).")
flags.DEFINE_integer("max_new_tokens", 64, "Tokens to sample (generate).")
flags.DEFINE_float("temperature", 0.8, "Sampling temperature; 0 is greedy (generate).")
flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens; 0 keeps all (generate).")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (generate).")
flags.DEFINE_integer("seed", 0, "Sampling seed (generate).")
flags.DEFINE_integer("num_processes", None, "Processes of a multi-host run (jax.distributed).")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 in a multi-host run.")
FLAGS = flags.FLAGS


def _fail(line: str):
  print(f"dept_jax: error: {line}", file=sys.stderr, flush=True)
  sys.exit(2)


def parse_flags(argv):
  """absl's parser; a bad --config file or key (raised while parsing, before main) gets one line."""
  try:
    rest = FLAGS(argv)
    if FLAGS.config is not None:
      FLAGS.config.keys()  # a config file that failed to load raises only when first read
  except Exception as e:
    _fail(errors.flag_error_line(e, argv))
  for name in ("workdir", "out"):
    # A run folder (lock, records, metrics, exports) is written through the local filesystem:
    # os.makedirs("gs://b/run") would quietly create a local folder named "gs:".
    value = getattr(FLAGS, name)
    if value and "://" in value:
      _fail(f"--{name}={value}: run and export folders are written through the local "
            f"filesystem, and {value.split('://')[0]}:// is not one. Fix: use a local or mounted "
            "path (e.g. the bucket mounted with gcsfuse); data sources may stay gs:// URLs.")
  return rest


def main(argv):
  # Heavy modules (JAX, orbax) load here, not at import: data preparation's worker processes
  # import this module (multiprocessing's spawn re-imports __main__) and need none of them.
  from dept_jax import modes
  from dept_jax.checkpoint import CheckpointError
  from dept_jax.data.cache import PreparationStopped
  from dept_jax.hf_export import ExportError
  from dept_jax.run_dir import WorkdirError
  from dept_jax.train import NonFiniteLossError
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv):
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    errors.quiet_abandoned_saves()
  try:
    modes.run(FLAGS.mode, FLAGS)
  except PreparationStopped as e:
    print(f"[dept_jax] {e}: stopped while tokenizing the data; the shards finished so far are "
          "kept. Run the same command again to go on.", flush=True)
    sys.exit(0)
  except (ConfigError, CheckpointError, NonFiniteLossError, FileNotFoundError, FileExistsError,
          ExportError, WorkdirError) as e:
    # Expected failures get their message, not a traceback; the message names the fix.
    _fail(str(e))
  except Exception as e:
    line = errors.disk_error_line(e, FLAGS.out or FLAGS.workdir or os.getcwd())
    if line is None:
      raise
    print(f"dept_jax: error: {line}", file=sys.stderr, flush=True)
    # orbax's writer threads may still hold the failed save: end without their shutdown noise.
    os._exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
