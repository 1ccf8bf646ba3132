# SPDX-License-Identifier: Apache-2.0
"""zipvl.runtime: run a zipvl engine directory on ONNX Runtime (vision -> sparse prefill -> evicted-cache decode).

>>> from zipvl.runtime import Engine, Prompt
>>> engine = Engine("engine_dir")
>>> out = engine.generate([Prompt(input_ids, pixel_values)], max_new_tokens=32)
"""

from .engine import Engine, Generation, PrefillResult
from .errors import EngineError, EngineFileError, EngineLimitError, EngineVersionError, ManifestError
from .manifest import FORMAT_VERSION, load_manifest
from .multimodal import Prompt

__all__ = [
           "FORMAT_VERSION",
           "Engine",
           "EngineError",
           "EngineFileError",
           "EngineLimitError",
           "EngineVersionError",
           "Generation",
           "ManifestError",
           "PrefillResult",
           "Prompt",
           "load_manifest",
]
