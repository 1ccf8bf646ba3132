# SPDX-License-Identifier: Apache-2.0
import os

import pytest
import torch

# Deterministic, and no surprise thread oversubscription on the 2-core CI box.
torch.manual_seed(0)
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def default_model():
    """The embedded default (real SmolLM2-135M in a LLaVA shell); converted once into $ZIPVL_CACHE."""
    from zipvl.models import load_default_model

    return load_default_model()
