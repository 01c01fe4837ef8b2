"""Shared test set-up: device parametrisation (CPU always, CUDA marked `gpu`) and fixtures."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
os.environ.setdefault("no_proxy", "127.0.0.1,localhost")

pytest_plugins = ["tests.oss_server", "tests.videos", "tests.footage"]


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_runtest_setup(item):
    """`gpu` tests skip without CUDA, and fail instead when VQF_REQUIRE_GPU=1."""
    if "gpu" not in item.keywords or cuda_available():
        return
    if os.environ.get("VQF_REQUIRE_GPU") == "1":
        pytest.fail("VQF_REQUIRE_GPU=1 but CUDA is not available")
    pytest.skip("needs CUDA (set VQF_REQUIRE_GPU=1 to fail instead)")


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """One test body per device: CPU always, CUDA marked `gpu`."""
    return request.param
