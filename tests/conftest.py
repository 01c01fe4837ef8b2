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


@pytest.fixture(autouse=True)
def budget_back_to_zero(monkeypatch):
    """Every rank a test runs in this process ends with its byte budget back at zero: each
    clip buffer gave its bytes back exactly once, on every path."""
    try:
        from vqf.engine.rank import Rank
    except ImportError:  # a test environment without the engine's dependencies
        yield
        return
    run = Rank.run

    def checked(self, *args, **kwargs):
        snap = run(self, *args, **kwargs)
        held = {p: self.budget.used[p] for p in self.budget.used if self.budget.used[p]}
        queued = {p: self.budget.queued[p] for p in self.budget.queued if self.budget.queued[p]}
        assert not held and not queued, f"budget not back to zero: {held} held, {queued} queued"
        return snap

    monkeypatch.setattr(Rank, "run", checked)
    yield
