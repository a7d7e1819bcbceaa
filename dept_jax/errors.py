"""The one line the command line prints for failures that arise outside dept_jax's own checks: a bad
--config file or key (found while absl parses flags, before `main` runs) and a disk that cannot
take a write (full, over quota, read-only), however deep in orbax or tensorstore it surfaced; and
the filters that keep a failed async save from burying that line in other threads' reports."""
from __future__ import annotations

import errno
import logging as std_logging
import os
import re
import sys

from absl import logging as absl_logging

_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
_DISK_ERRNOS = _FULL + _NOT_WRITABLE + (errno.EIO,)
# tensorstore names the file it failed to write, else the database folder it was writing.
_TENSORSTORE_PATHS = (r'Failed writing: "([^"]+)"', r'local file "([^"]+)"')
_RERUN = "then run the same command again (training resumes from its last complete checkpoint)"


def _chain(e: BaseException):
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


def _os_error(e: BaseException):
  """(errno, path or None) of the first disk error in e's chain: an OSError, or tensorstore's
  text form '... Failed writing: "PATH" ... [os_error_code='28']' that orbax re-raises."""
  for x in _chain(e):
    if isinstance(x, OSError) and x.errno in _DISK_ERRNOS:
      return x.errno, x.filename
    m = re.search(r"os_error_code='(\d+)'", str(x))
    if m and int(m.group(1)) in _DISK_ERRNOS:
      found = (re.search(p, str(x)) for p in _TENSORSTORE_PATHS)
      return int(m.group(1)), next((f.group(1) for f in found if f), None)
  return None


def disk_error_line(e: BaseException, where: str) -> str | None:
  """The one-line message for a write the disk refused, or None if e is something else."""
  found = _os_error(e)
  if found is None:
    return None
  code, path = found
  path = path or where
  what = f"cannot write {path}: {os.strerror(code)}"
  if code in _FULL:
    return (f"{what}. Fix: free space on that disk (or raise the quota or file-size limit), or "
            f"use a --workdir on another disk; {_RERUN}.")
  if code in _NOT_WRITABLE:
    return f"{what}. Fix: make it writable, or use a --workdir you can write to; {_RERUN}."
  return f"{what}. Fix: check that disk (an I/O error); {_RERUN}."


def _message(e: BaseException) -> str:
  msg = e.args[0] if e.args else str(e)
  while isinstance(msg, BaseException):  # ml_collections wraps a KeyError in an AttributeError
    msg = msg.args[0] if msg.args else str(msg)
  return str(msg)


def flag_error_line(e: BaseException, argv) -> str:
  """One line for an exception raised while parsing --config and its overrides."""
  msg = _message(e)
  if isinstance(e, (KeyError, AttributeError)):
    lines = msg.strip().split("\n")
    name = lines[0].strip("'\"")
    hint = f" ({lines[1].strip()})" if len(lines) > 1 else ""
    flag = next((a for a in argv if a.startswith("--config.")
                 and name in a.split("=")[0].split(".")), "a --config override")
    return (f"{flag}: the config has no key '{name}'{hint}. Fix: use a key the config has "
            "(the defaults are in dept_jax/config_lib.py).")
  if "Failed loading config file" in msg or "Attempted" in msg:
    reason = [l.strip() for l in "\n".join(map(_message, _chain(e))).split("\n")
              if l.strip().startswith("[Errno")]
    config = next((a.split("=", 1)[-1] for a in argv if a.startswith("--config=")), None)
    if config is None and "--config" in argv:
      config = argv[argv.index("--config") + 1] if argv.index("--config") + 1 < len(argv) else ""
    return (f"--config {config}: cannot load the config file ({reason[0] if reason else msg}). "
            "Fix: pass an existing configs/*.py file (optionally with :ARG).")
  last = [l.strip() for l in msg.split("\n") if l.strip()]
  flag = re.match(r"flag (--\S+?): ", msg)
  where = flag.group(1) + ": " if flag else ""
  # A config file's own error arrives as a traceback inside the flag error: keep its last line.
  text = re.sub(r"^[\w.]+(Error|Exception): ", "", last[-1]) if last else msg
  if flag and text.startswith(f"flag {flag.group(1)}: "):
    text = text[len(f"flag {flag.group(1)}: "):]
  if "Fix:" in text:
    return f"{where}{text}"
  fix = ("pass a value of the key's type (the defaults are in dept_jax/config_lib.py)"
         if where.startswith("--config.") else "see python -m dept_jax.main --helpshort")
  return f"{where}{text.rstrip('.')}. Fix: {fix}."


class _OrbaxErrorsRaisedLater(std_logging.Filter):
  """orbax logs a failed background save (with tracebacks, from several threads) and then raises
  the same error on the main thread at the next save, where it gets its one line: keep that."""

  def filter(self, record):
    return not (record.levelno >= std_logging.ERROR and f"{os.sep}orbax{os.sep}" in
                record.pathname)


def quiet_abandoned_saves():
  """A failed async save leaves tensorstore callbacks aimed at orbax's closed event loop; their
  'Event loop is closed' reports say nothing the error line does not."""
  absl_logging.get_absl_handler().addFilter(_OrbaxErrorsRaisedLater())
  report = sys.unraisablehook

  def hook(u):
    if not (isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed"):
      report(u)
  sys.unraisablehook = hook
