# SPDX-License-Identifier: Apache-2.0
"""zipvl-build's engine: export embed / vision / prefill / decode graphs, share their weights, write the manifest."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch

from .. import __version__
from ..config import ZipVLConfig
from ..errors import ZipVLInputError
from ..runtime.manifest import FORMAT, FORMAT_VERSION, file_entry, load_manifest, write_manifest
from . import graphs
from .weights import WEIGHTS, share_weights
from .wrappers import describe

log = logging.getLogger(__name__)

OPS = ("standard", "plugin")
# ZipVLConfig variant fields the engine graphs implement; the probe set is the runtime's (the prefill graph takes the
# probe positions as an input), pooling and protection are in the graph (protect_text: with the image mask as a graph
# input), tau_evict is a second kept set in the graph, head_reduce="kv" a kept set per KV head (and the decode graph's
# cache a length per KV head)
ENGINE_VARIANTS = ("sparse_prefill", "probe_set", "question_tokens", "pool", "pool_kernel", "protect_first",
                   "protect_last", "protect_text", "head_reduce", "tau_evict", "min_ratio")
# ... of which the TensorRT plugin lowering (ZipVLTokenSelect implements the paper's rule) has
PLUGIN_VARIANTS = ("sparse_prefill", "probe_set", "question_tokens")
PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "processor_config.json",
                   "preprocessor_config.json", "chat_template.json", "chat_template.jinja", "vocab.json",
                   "merges.txt", "added_tokens.json", "generation_config.json")


def load_model(source: str | Path | None):
    """A local HF checkpoint directory (or the embedded default when None) -> (model in fp32 eval, directory)."""
    import transformers

    if source is None:
        from ..models import default_model_dir

        source = default_model_dir()
    source = Path(source)
    if not (source / "config.json").is_file():
        raise ZipVLInputError(f"{source} is not a Hugging Face checkpoint directory (no config.json)")
    config = transformers.AutoConfig.from_pretrained(source)
    arch = (config.architectures or [None])[0]
    cls = getattr(transformers, arch or "", None)
    if cls is None:
        raise ZipVLInputError(f"{source}: unknown architecture {arch!r} in config.json")
    model = cls.from_pretrained(source, dtype=torch.float32)
    return model.eval(), source


def build_engine(model, out_dir: str | Path, ops: str = "standard", config: ZipVLConfig | None = None,
                 max_batch: int = 8, max_sequence: int | None = None, source_dir: str | Path | None = None,
                 reuse: str | Path | None = None, progress: bool = True, jobs: int = 1) -> dict:
    """Export ``model`` (a supported HF model) into the engine directory ``out_dir``; returns the manifest.

    Parameters
    ----------
    ops : "standard" (selection in standard ONNX ops, attention as com.microsoft.GroupQueryAttention: ONNX Runtime)
        or "plugin" (ZipVLTokenSelect + ONNX Attention, opset 23: TensorRT)
    config : the ZipVLConfig baked into the prefill graph (tau, dense layers) and recorded for the runtime
    max_batch, max_sequence : limits the runtime enforces (max_sequence = prompt + generated tokens per sequence;
        default min(model positions, 8192)); the KV capacity per layer and sequence is max_sequence
    source_dir : checkpoint directory whose tokenizer / processor files are copied into the engine
    reuse : an engine directory of the same model whose embed / vision (and, built with the same ops, decode) graphs
        are reused (prefill depends on ops and tau, decode on ops)
    jobs : > 1 exports the graphs in that many worker processes that load the model from ``source_dir`` (so
        ``model`` must be that checkpoint as saved, as in zipvl-build); 1 (default) exports ``model`` in process
    """
    if ops not in OPS:
        raise ZipVLInputError(f"--ops must be one of {OPS}, got {ops!r}")
    config = config or ZipVLConfig()
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    desc = describe(model)
    if config.min_length > 0:
        raise ZipVLInputError("engines do not implement the min_length dense fallback yet; build with min_length=0")
    unsupported = {k: v for k, v in config.variants().items() if k not in ENGINE_VARIANTS}
    if unsupported:
        raise ZipVLInputError("engines implement the paper's selection and " + ", ".join(ENGINE_VARIANTS)
                              + ", not the ZipVLConfig variant "
                              + ", ".join(f"{k}={v!r}" for k, v in unsupported.items())
                              + "; build with these fields at their defaults")
    if config.protect_text and "image_token_id" not in desc:
        raise ZipVLInputError(f"protect_text (preset 'visual_only') sparsifies visual tokens only, and "
                              f"{desc['architecture']} has none: every token would be kept; build another preset")
    if config.pool == "avg":
        raise ZipVLInputError("engines implement pool='max' (MaxPool), not 'avg'; build with pool='max' or 'none'")
    plugin_unsupported = [k for k in config.variants() if k not in PLUGIN_VARIANTS]
    if ops == "plugin" and plugin_unsupported:
        raise ZipVLInputError("--ops plugin: ZipVLTokenSelect implements the paper's selection rule, not "
                              + ", ".join(f"{k}={getattr(config, k)!r}" for k in plugin_unsupported)
                              + "; build this preset with --ops standard")
    bad = [i for i in config.dense_layers if i >= desc["num_layers"]]
    if bad:
        raise ZipVLInputError(f"dense_layers {bad} out of range: the model has {desc['num_layers']} layers")
    max_sequence = int(max_sequence or min(desc["max_position_embeddings"], 8192))
    reused = _reusable(reuse, desc, ops, config) if reuse is not None else {}
    names = [n for n in graphs.graph_names(desc) if n not in reused]
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix=".zipvl-build-", dir=out_dir) as tmp:
        paths = {**reused, **{n: Path(tmp) / f"{n}.onnx" for n in names}}
        if jobs > 1 and source_dir is not None and len(names) > 1:
            from .parallel import export_parallel

            bar = _progress(None, progress, total=len(names))
            timings = export_parallel(names, source_dir, config, ops, paths, jobs,
                                      on_done=(lambda _n: bar.update(1)) if bar is not None else None)
            if bar is not None:
                bar.close()
        else:
            for name in _progress(names, progress):
                t = time.perf_counter()
                with _quiet():
                    graphs.export_graph(name, model, desc, config, ops, paths[name])
                timings[name] = round(time.perf_counter() - t, 2)
                log.info("exported %s in %.1f s", name, timings[name])
        order = [n for n in graphs.graph_names(desc)]
        share_weights({n: paths[n] for n in order}, out_dir)
    extra = graphs.export_extras(model, desc, out_dir)
    if source_dir is not None:
        extra += _copy_processor(Path(source_dir), out_dir)
    files = {f"{n}.onnx": file_entry(out_dir / f"{n}.onnx") for n in order}
    files[WEIGHTS] = file_entry(out_dir / WEIGHTS)
    files.update({rel: file_entry(out_dir / rel) for rel in extra})
    import onnx

    opset = max(o.version for o in onnx.load(str(out_dir / "prefill.onnx"), load_external_data=False).opset_import
                if o.domain in ("", "ai.onnx"))
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "zipvl_version": __version__,
        "model": {**desc, "source": str(source_dir) if source_dir else None},
        "zipvl": config.to_dict(), "ops": ops, "opset": opset,
        "limits": {"max_batch": int(max_batch), "max_sequence": max_sequence, "kv_capacity": max_sequence,
                   "prefill_batch": 1},
        "graphs": {n: f"{n}.onnx" for n in order},
        "extras": {Path(rel).stem: rel for rel in extra if rel.endswith(".npy")},
        "processor": "processor" if any(f"processor/{n}" in extra for n in PROCESSOR_FILES[:5]) else None,
        "files": files,
        "build": {"seconds": round(time.perf_counter() - t0, 2), "graph_seconds": timings, "jobs": jobs,
                  "reused": sorted(reused), "torch": torch.__version__, "transformers": _version("transformers"),
                  "onnx": onnx.__version__, "engine_bytes": sum(e["bytes"] for e in files.values())},
    }
    write_manifest(out_dir, manifest)
    return manifest


def _reusable(reuse, desc, ops: str, config: ZipVLConfig) -> dict[str, Path]:
    """The graphs of engine ``reuse`` this build can take over: never prefill (tau, dense layers), decode only when
    it was built with the same --ops (the attention lowering) and cache layout (a length per KV head or not)."""
    manifest = load_manifest(reuse, verify_hashes=False)
    theirs = {k: v for k, v in manifest["model"].items() if k != "source"}
    if theirs != desc:
        raise ZipVLInputError(f"--reuse {reuse}: that engine was built from a different model")
    same_layout = (manifest["zipvl"].get("head_reduce") == "kv") == (config.head_reduce == "kv")
    skip = {"prefill"} if manifest["ops"] == ops and same_layout else set(graphs.OPS_GRAPHS)
    return {n: Path(reuse) / f for n, f in manifest["graphs"].items() if n not in skip}


def _copy_processor(src: Path, out_dir: Path) -> list[str]:
    copied = []
    for name in PROCESSOR_FILES:
        if (src / name).is_file():
            (out_dir / "processor").mkdir(exist_ok=True)
            shutil.copy2(src / name, out_dir / "processor" / name)
            copied.append(f"processor/{name}")
    return copied


def _progress(items, enabled: bool, total: int | None = None):
    """A progress bar over ``items`` (or a manual one of ``total`` steps when items is None); disabled: the items."""
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc="zipvl-build", unit="graph", bar_format="{desc}: {n}/{total} graphs {postfix}")


@contextlib.contextmanager
def _quiet():
    """torch.onnx prints its own step lines; keep the build's output to our progress bar."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)
