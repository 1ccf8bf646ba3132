# SPDX-License-Identifier: Apache-2.0
"""The ONNX Runtime GenAI peer (optional: ``pip install 'zipvl[peers]'``) and the helper that builds its model.

ORT GenAI runs what its own model builder (``onnxruntime_genai.models.builder``) makes from a Hugging Face
checkpoint, so the peer is built from the same local weights the bench runs: the language model is re-saved as a
plain ``*ForCausalLM`` folder (a LLaVA's LM without its vision tower; prompts are text-only) with its tokenizer, and
the builder is run on it offline (fp32, CPU). The result is cached in ``$ZIPVL_CACHE/ortgenai/<model>``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .backends import BackendUnavailableError
from .peers import Peer

INSTALL_HINT = "pip install 'zipvl[peers]' (onnxruntime-genai, onnx-ir, onnxscript)"


def require() -> None:
    """Raise a one-line :class:`BackendUnavailableError` when ORT GenAI or its builder's dependencies are missing."""
    missing = [m for m in ("onnxruntime_genai", "onnx_ir", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendUnavailableError(f"the ortgenai peer needs {', '.join(missing)}: {INSTALL_HINT}")


def save_causal_lm(model, tokenizer, out_dir: str | Path) -> Path:
    """Save the language model of ``model`` (a LLaVA-style VLM or a plain causal LM) as a causal-LM checkpoint
    folder the ORT GenAI builder reads, with ``tokenizer``."""
    import transformers as tf

    out_dir = Path(out_dir)
    inner = getattr(model, "model", None)
    lm = getattr(inner, "language_model", None)
    if lm is None:  # already a causal LM
        model.save_pretrained(out_dir)
    else:
        text_config = model.config.get_text_config(decoder=True)
        causal = tf.AutoModelForCausalLM.from_config(text_config)
        state = {f"model.{k}": v for k, v in lm.state_dict().items()}
        state["lm_head.weight"] = model.lm_head.weight
        causal.load_state_dict(state, strict=True)
        causal.save_pretrained(out_dir)
    if tokenizer is None:
        raise BackendUnavailableError("the ortgenai peer needs a tokenizer (its builder writes one into the model "
                                      "folder); this model has none")
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_model(checkpoint: str | Path, out_dir: str | Path, timeout_s: float = 900) -> Path:
    """Run the ORT GenAI model builder on a local causal-LM ``checkpoint`` (fp32, CPU, no download) into
    ``out_dir`` (written atomically; an existing build is reused)."""
    require()
    out_dir = Path(out_dir)
    if (out_dir / "genai_config.json").is_file():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=out_dir.name + ".", dir=out_dir.parent) as tmp:
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", str(checkpoint), "-i", str(checkpoint),
               "-o", f"{tmp}/model", "-p", "fp32", "-e", "cpu", "-c", f"{tmp}/cache"]
        run = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout_s,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if run.returncode != 0 or not Path(f"{tmp}/model/genai_config.json").is_file():
            tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
            raise BackendUnavailableError(f"the ORT GenAI model builder failed on {checkpoint}: {tail[0][:300]}")
        shutil.move(f"{tmp}/model", out_dir)
    return out_dir


def model_folder(bench) -> Path:
    """The ORT GenAI model for a loaded bench model, built once from its own weights into the zipvl cache."""
    require()
    import onnxruntime_genai as og

    from ..models import cache_root

    if bench.source == "default":
        from ..models import default_model_dir

        name = default_model_dir().name
    else:
        name = "".join(c if c.isalnum() or c in "-_." else "-" for c in bench.source.strip("/"))[-80:]
    out = cache_root() / "ortgenai" / f"{name}-l{bench.layers_used}-og{og.__version__}"
    if (out / "genai_config.json").is_file():
        return out
    with tempfile.TemporaryDirectory(prefix="zipvl-ortgenai-src-") as src:
        save_causal_lm(bench.model, bench.tokenizer, src)
        return build_model(src, out)


class OrtGenAIPeer(Peer):
    """ONNX Runtime GenAI, dense: ``append_tokens`` of the prompt is the prefill, ``generate_next_token`` a step
    (greedy). The builder's graph computes logits for every prompt position (its design, not ours)."""

    name = "ortgenai"

    def __init__(self, folder: str | Path, threads: int | None = None):
        require()
        import onnxruntime_genai as og

        self._og, self.folder, self.threads = og, Path(folder), threads
        if not (self.folder / "genai_config.json").is_file():
            raise BackendUnavailableError(f"{folder} is not an ORT GenAI model folder (no genai_config.json)")
        self.config = json.loads((self.folder / "genai_config.json").read_text())
        cfg = og.Config(str(self.folder))
        if threads:
            cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        self.model = og.Model(cfg)

    def describe(self) -> dict:
        return {"peer": "ONNX Runtime GenAI dense (its model builder, fp32, CPU)", "folder": str(self.folder),
                "onnxruntime_genai": self._og.__version__, "threads": self.threads or "ORT default"}

    def max_length(self) -> int:
        return int(self.config["model"]["context_length"])

    def _generator(self, ids, batch: int, new_tokens: int):
        params = self._og.GeneratorParams(self.model)
        # max_length bounds the shared past/present buffer GenAI allocates: prompt + the tokens this run makes
        # (GenAI refuses more than the model's context_length, and a prompt of exactly that length is valid).
        length = min(int(ids.shape[1]) + new_tokens + 1, self.max_length())
        params.set_search_options(max_length=length, batch_size=batch)
        return self._og.Generator(self.model, params)

    def prefill(self, ids):
        tokens = np.ascontiguousarray(ids.cpu().numpy().astype(np.int32))
        gen = self._generator(tokens, 1, 1)
        t = time.perf_counter()
        gen.append_tokens(tokens)
        return time.perf_counter() - t

    def decode_steps(self, ids, batch, steps):
        tokens = np.ascontiguousarray(np.repeat(ids.cpu().numpy().astype(np.int32), batch, axis=0))
        gen = self._generator(tokens, batch, steps)
        gen.append_tokens(tokens)  # the batch's prefill (B identical prompts), not timed
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            gen.generate_next_token()
            times.append(time.perf_counter() - t)
        return times
