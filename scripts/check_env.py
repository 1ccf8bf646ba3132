#!/usr/bin/env python
# SPDX-License-Identifier: Apache-2.0
"""Check the installed environment against pyproject.toml and the lock, in one line per problem (exit 1).

- every requirement of zipvl (base and the `all` extra, `trt-rtx` when present) is met by what is installed;
- `pip check` is clean for the locked packages, except requirements/no-deps.txt, whose runtime dependencies are left
  out on purpose.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _no_deps_packages() -> set[str]:
    lines = (ROOT / "requirements" / "no-deps.txt").read_text().splitlines()
    return {canonicalize_name(Requirement(x).name) for x in lines if x.strip() and not x.startswith("#")}


def _extras() -> list[str]:
    extras = {"all", "model", "export", "data", "dev"}
    try:
        metadata.version("tensorrt-rtx-cu13-libs")
        extras.add("trt-rtx")
    except metadata.PackageNotFoundError:
        pass
    return sorted(extras)


def zipvl_problems(ignore: set[str]) -> list[str]:
    problems = []
    for text in metadata.requires("zipvl") or []:
        req = Requirement(text)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in _extras()):
            continue
        if canonicalize_name(req.name) == "zipvl" or canonicalize_name(req.name) in ignore:
            continue
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"zipvl needs {req} but {req.name} is not installed")
            continue
        if not req.specifier.contains(have, prereleases=True):
            problems.append(f"zipvl needs {req} but {req.name} {have} is installed")
    return problems


def _locked_packages() -> set[str]:
    lines = (ROOT / "requirements" / "cpu.lock").read_text().splitlines()
    return {canonicalize_name(x.split("==")[0]) for x in lines if "==" in x and not x.startswith("#")}


def pip_check_problems() -> list[str]:
    """Broken requirements among zipvl's dependency set (an image's unrelated packages are not ours to judge)."""
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, check=False).stdout
    ours = _locked_packages() - _no_deps_packages()
    return [line for line in out.splitlines()
            if line.strip() and "No broken requirements" not in line and canonicalize_name(line.split()[0]) in ours]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ignore", action="append", default=[],
                        help="a package whose version the image owns (e.g. torch in a GPU image)")
    ignore = {canonicalize_name(x) for x in parser.parse_args().ignore}
    problems = zipvl_problems(ignore) + pip_check_problems()
    for p in problems:
        print(f"check_env: {p}", file=sys.stderr)
    if problems:
        print("check_env: the environment does not match pyproject.toml / requirements/cpu.lock "
              "(reinstall with bash scripts/install.sh, or refresh the lock with bash scripts/lock.sh)", file=sys.stderr)
        return 1
    print(f"check_env: ok (transformers {metadata.version('transformers')}, torch {metadata.version('torch')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
