"""The built-in default corpus: real text that a machine with Python already holds, as sources that
differ in domain and script. Nothing third-party is committed; dept_jax builds it deterministically
(sorted file lists, fixed caps, duplicates dropped) into CACHE/v1/<source>.jsonl, one document a line.

  prose       English prose: the interpreter's own help topics and the stdlib's module docstrings
  python      Python source code of the standard library
  c_headers   C headers: CPython's include dir, then /usr/include
  licences    licence texts: CPython's LICENSE, /usr/share/common-licenses, /usr/share/doc/*/copyright
  msg_<lang>  translated message catalogues (/usr/share/locale/<lang>/LC_MESSAGES/*.mo), one source
              per language, only where the machine has them (skipped with a notice otherwise)
"""
from __future__ import annotations

import gettext
import glob
import hashlib
import json
import os
import re
import sys
import sysconfig

from absl import logging

VERSION = "v1"
CAP_BYTES = 2_500_000  # per source: enough for the demo, small enough to tokenize in a second
LANGUAGES = ("de", "fr", "ru", "ja", "zh_CN", "es", "uk", "ko")
_STDLIB = sysconfig.get_paths()["stdlib"]
_DOCSTRING = re.compile(r'^(?:#[^\n]*\n|\s)*[rRuU]?("""|\'\'\')(.*?)\1', re.S)


def cache_dir(path: str = "") -> str:
  """CACHE/corpus, where CACHE is data.cache_dir (default $DEPT_JAX_CACHE or ~/.cache/dept_jax)."""
  from dept_jax.data.cache import cache_root
  return os.path.join(cache_root(path), "corpus")


def _stdlib_py() -> list[str]:
  files = []
  for root, dirs, names in os.walk(_STDLIB):
    # Tests, vendored packages and installed third-party code are not "the standard library".
    dirs[:] = sorted(d for d in dirs if d not in ("test", "tests", "site-packages", "idle_test",
                                                  "__pycache__", "lib2to3", "turtledemo"))
    files += [os.path.join(root, n) for n in sorted(names) if n.endswith(".py")]
  return files


def _read(path: str) -> str:
  with open(path, "rb") as f:
    return f.read().decode("utf-8", "replace")


def _prose():
  from pydoc_data.topics import topics
  for key in sorted(topics):
    yield topics[key]
  for path in _stdlib_py():
    m = _DOCSTRING.match(_read(path))
    if m and len(m.group(2)) > 200:
      yield m.group(2).strip() + "\n"


def _python():
  for path in _stdlib_py():
    yield _read(path)


def _header_files():
  inc = sysconfig.get_paths().get("include") or ""
  files = sorted(glob.glob(os.path.join(inc, "**", "*.h"), recursive=True)) if inc else []
  return files + sorted(glob.glob("/usr/include/**/*.h", recursive=True))


def _c_headers():
  for path in _header_files():
    yield _read(path)


def _licence_files():
  here = [os.path.join(_STDLIB, "LICENSE.txt"), os.path.join(sys.base_prefix, "LICENSE.txt")]
  return ([p for p in here if os.path.isfile(p)]
          + sorted(p for p in glob.glob("/usr/share/common-licenses/*") if os.path.isfile(p))
          + sorted(glob.glob("/usr/share/doc/*/copyright")))


def _licences():
  for path in _licence_files():
    yield _read(path)


def _mo_dir(lang: str) -> str:
  return f"/usr/share/locale/{lang}/LC_MESSAGES"


def _messages(lang: str):
  for path in sorted(glob.glob(os.path.join(_mo_dir(lang), "*.mo"))):
    try:
      with open(path, "rb") as f:
        catalog = gettext.GNUTranslations(f)._catalog  # msgid -> translated msgstr
    except Exception:  # a damaged or oddly encoded catalogue: skip it, it is only sample text
      continue
    lines = [v.strip() for k, v in sorted(catalog.items(), key=lambda kv: str(kv[0]))
             if k and isinstance(v, str) and v.strip() and v != k]
    if lines:
      yield "\n".join(lines) + "\n"


def _builders() -> dict:
  b = {"prose": _prose, "python": _python, "c_headers": _c_headers, "licences": _licences}
  for lang in LANGUAGES:
    b[f"msg_{lang}"] = lambda lang=lang: _messages(lang)
  return b


def why_absent(name: str) -> str | None:
  """None when the machine holds this source's text, else what is missing."""
  if name == "prose":
    try:
      import pydoc_data.topics  # noqa: F401
    except ImportError:
      return "pydoc_data (the interpreter's help topics) is not installed"
  elif name == "python":
    return None if os.path.isfile(os.path.join(_STDLIB, "os.py")) else f"no stdlib at {_STDLIB}"
  elif name == "c_headers":
    return None if _header_files() else "no C headers (CPython include dir, /usr/include)"
  elif name == "licences":
    return None if _licence_files() else "no licence texts found"
  elif name.startswith("msg_"):
    d = _mo_dir(name[4:])
    return None if glob.glob(os.path.join(d, "*.mo")) else f"{d} has no message catalogues"
  else:
    return f"unknown built-in source (known: {', '.join(_builders())})"
  return None


def available(names=None) -> list[str]:
  """The built-in sources this machine can make, in the given order; absent ones get a notice."""
  out = []
  for name in names or list(_builders()):
    why = why_absent(name)
    if why:
      logging.warning("built-in corpus: skipping source '%s': %s", name, why)
    else:
      out.append(name)
  return out


def ensure(name: str, cache: str = "", cap_bytes: int = CAP_BYTES) -> str:
  """Path of the source's .jsonl in the cache, building it first if needed."""
  path = os.path.join(cache_dir(cache), VERSION, f"{name}.jsonl")
  if os.path.exists(path):
    return path
  why = why_absent(name)
  if why:
    from dept_jax.data.base import fail
    fail(name, f"this built-in source cannot be made here: {why}",
         "drop it from config.data.sources, or use configs/folders.py with your own text")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  seen, total, tmp = set(), 0, path + f".tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    for text in _builders()[name]():
      digest = hashlib.sha1(text.encode("utf-8", "replace")).digest()
      if not text.strip() or digest in seen:  # e.g. the many identical GPL copyright files
        continue
      seen.add(digest)
      f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
      total += len(text.encode("utf-8", "replace"))
      if total >= cap_bytes:
        break
  os.replace(tmp, path)  # atomic: a concurrent or killed build never leaves half a file
  logging.info("built-in corpus: wrote %s (%.1f MB)", path, total / 1e6)
  return path
