# SPDX-License-Identifier: Apache-2.0
import os

import pytest
import torch

# Deterministic; one intra-op thread by default (tiny models gain nothing from more, and a loaded 2-core box
# slows down badly when oversubscribed). ZIPVL_TEST_THREADS overrides.
torch.manual_seed(0)
torch.set_num_threads(int(os.environ.get("ZIPVL_TEST_THREADS", "1")))


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
