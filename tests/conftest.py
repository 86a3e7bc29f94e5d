import os

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")  # offscreen rendering on CPU (see README)


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors: a second intra-op thread only adds contention on a 2-core machine (10-100x slower steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
