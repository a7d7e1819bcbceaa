"""The second corpus of the study (bench/RESULTS.md): a folder of five domains that a Debian/Ubuntu
machine with Python packages installed already holds, none of them in the built-in corpus.

  python bench/make_folder_corpus.py OUT_DIR [--site_packages DIR]

  man_en   English man pages (troff, gzipped), /usr/share/man/man1
  man_de   German man pages, /usr/share/man/de
  man_fr   French man pages, /usr/share/man/fr (the study holds this one out)
  perl     Perl modules, /usr/share/perl
  readmes  Python packages' METADATA (their README in Markdown or reStructuredText)

Files are copied in sorted order until a source reaches its byte cap, so the same machine gives
the same folder. Then:

  python -m dept_jax.main --mode=study --config configs/study_folders.py:OUT_DIR,man_fr \
      --workdir runs/study_folders
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import sysconfig

SOURCES = {  # name: (glob pattern, byte cap of the copied files)
    "man_en": ("/usr/share/man/man1/*.gz", 1_000_000),
    "man_de": ("/usr/share/man/de/**/*.gz", 1_000_000),
    "man_fr": ("/usr/share/man/fr/**/*.gz", 1_000_000),
    "perl": ("/usr/share/perl/**/*.pm", 3_000_000),
    "readmes": ("{site_packages}/**/METADATA", 3_000_000),
}


def copy_capped(name: str, files: list[str], cap: int, out: str) -> tuple[int, int]:
  """Copy files in sorted order, skipping any that would pass the cap; (files, bytes) copied."""
  dest = os.path.join(out, name)
  os.makedirs(dest, exist_ok=True)
  count = total = 0
  for path in sorted(files):
    size = os.path.getsize(path) if os.path.isfile(path) else None
    if size is None or total + size > cap:
      continue
    shutil.copyfile(path, os.path.join(dest, path.strip("/").replace("/", "__")))
    count, total = count + 1, total + size
  return count, total


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("out")
  ap.add_argument("--site_packages", default=sysconfig.get_paths()["purelib"])
  args = ap.parse_args()
  for name, (pattern, cap) in SOURCES.items():
    files = glob.glob(pattern.format(site_packages=args.site_packages), recursive=True)
    count, total = copy_capped(name, files, cap, args.out)
    if not count:
      raise SystemExit(f"{name}: nothing matches {pattern} on this machine")
    print(f"{name}: {count} files, {total:,} bytes")


if __name__ == "__main__":
  main()
