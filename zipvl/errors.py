# SPDX-License-Identifier: Apache-2.0
"""One exception family, so every bad input surfaces as a single clear message."""


class ZipVLError(Exception):
    """Base class of every error zipvl raises on purpose."""


class ZipVLConfigError(ZipVLError, ValueError):
    """A ZipVLConfig field is out of range or of the wrong type."""


class UnsupportedModelError(ZipVLError, TypeError):
    """The model's architecture is not one zipvl knows how to sparsify."""


class ZipVLInputError(ZipVLError, ValueError):
    """A tensor or prompt handed to zipvl has the wrong shape, dtype or length."""


class ZipVLIntegrationError(ZipVLError, RuntimeError):
    """transformers did not run ZipVL the way zipvl wired it (cache replaced or ignored, attention not called)."""
