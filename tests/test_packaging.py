"""setup.py declares what dept_jax imports, and dept_jax imports what setup.py requires: an import
that only works because another package happens to pull it in breaks on the next resolver change
(`tokenizers` came only with transformers, so `pip install -e .` could not read a tokenizer.json),
and a requirement nothing imports is weight every user installs for nothing."""
import ast
import importlib.metadata
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _norm(dist: str) -> str:
  return re.sub(r"[-_.]+", "-", dist).lower()


def _declared():
  """(install_requires, every extra's requirements) of setup.py, as normalised names."""
  tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
  call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and
              getattr(n.func, "id", "") == "setup")
  kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords
        if k.arg in ("install_requires", "extras_require")}
  name = lambda req: _norm(re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0])
  extras = {name(r) for reqs in kw["extras_require"].values() for r in reqs}
  return {name(r) for r in kw["install_requires"]}, extras


def _imported_modules() -> set[str]:
  """Top-level modules the package imports (absolute imports, lazy ones inside functions too)."""
  found = set()
  for folder, _, files in os.walk(os.path.join(ROOT, "dept_jax")):
    for f in files:
      if f.endswith(".py"):
        for node in ast.walk(ast.parse(open(os.path.join(folder, f)).read())):
          if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
          elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module.split(".")[0])
  return found - set(sys.stdlib_module_names) - {"dept_jax", "__future__"}


def _distributions(modules) -> dict[str, set[str]]:
  owners = importlib.metadata.packages_distributions()
  return {m: {_norm(d) for d in owners.get(m, [])} for m in modules}


def test_every_import_of_the_package_is_a_declared_requirement():
  required, extras = _declared()
  undeclared = {m: d for m, d in _distributions(_imported_modules()).items()
                if not d & (required | extras)}
  assert not undeclared, f"imported but not declared in setup.py: {undeclared}"


def test_every_requirement_is_imported_by_the_package():
  required, _ = _declared()
  used = set().union(*_distributions(_imported_modules()).values())
  assert required - used == set(), f"declared in install_requires but never imported: " \
                                   f"{required - used}"
