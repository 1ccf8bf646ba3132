# SPDX-License-Identifier: Apache-2.0
"""The engine manifest (``manifest.json``): what was built, from what, with which limits, and the files' hashes.

Written by :mod:`zipvl.export.build`, checked by :func:`load_manifest` before any graph is opened.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import EngineFileError, EngineVersionError, ManifestError

FORMAT = "zipvl-engine"
FORMAT_VERSION = 3  # 2: fused attention, per-layer lengths, present K/V + query out; 3: decode takes input_ids
MANIFEST = "manifest.json"
REQUIRED = ("format", "format_version", "zipvl_version", "model", "zipvl", "ops", "opset", "limits", "graphs", "files")


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": file_digest(path)}


def write_manifest(engine_dir: Path, manifest: dict) -> Path:
    path = Path(engine_dir) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def load_manifest(engine_dir: str | Path, verify_hashes: bool = True) -> dict:
    """Read and check ``engine_dir/manifest.json``; every listed file must exist with its size (and hash).

    Raises :class:`ManifestError`, :class:`EngineVersionError` or :class:`EngineFileError` with a one-line reason.
    """
    engine_dir = Path(engine_dir)
    path = engine_dir / MANIFEST
    if not engine_dir.is_dir():
        raise ManifestError(f"engine directory {engine_dir} does not exist; build one with `zipvl-build MODEL -o DIR`")
    if not path.is_file():
        raise ManifestError(f"{path} is missing: {engine_dir} is not a zipvl engine (build it with zipvl-build)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path} is corrupt (not valid JSON: {e}); rebuild the engine with zipvl-build") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"{path} is not a zipvl engine manifest (format != {FORMAT!r}); rebuild the engine")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise EngineVersionError(
            f"engine format version {version!r} in {path} is not supported by this zipvl "
            f"(reads version {FORMAT_VERSION}); rebuild the engine with this zipvl's zipvl-build")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise ManifestError(f"{path} is corrupt: missing fields {missing}; rebuild the engine")
    for name, entry in manifest["files"].items():
        f = engine_dir / name
        if not f.is_file():
            raise EngineFileError(f"engine file {f} listed in the manifest is missing; rebuild the engine")
        if f.stat().st_size != entry.get("bytes"):
            raise EngineFileError(f"engine file {f} has {f.stat().st_size} bytes, the manifest says "
                                  f"{entry.get('bytes')}: it is truncated or replaced; rebuild the engine")
        if verify_hashes and file_digest(f) != entry.get("sha256"):
            raise EngineFileError(f"engine file {f} does not match its sha256 in the manifest (corrupt or "
                                  f"modified); rebuild the engine")
    return manifest
