# SPDX-License-Identifier: Apache-2.0
"""Engine errors: each a :class:`zipvl.ZipVLError`, each message saying what is wrong and what to do."""

from ..errors import ZipVLError, ZipVLInputError


class EngineError(ZipVLError):
    """Base class of engine-directory problems."""


class ManifestError(EngineError):
    """manifest.json is missing, unreadable or malformed."""


class EngineVersionError(EngineError):
    """The engine was built with an engine format this runtime does not read."""


class EngineFileError(EngineError):
    """A file listed in the manifest is missing or does not match its recorded size / hash."""


class EngineLimitError(EngineError, ZipVLInputError):
    """A request exceeds a limit the engine was built for (batch, sequence length, KV capacity)."""
