"""Shared fixtures; the builders behind them are in ``helpers.py``."""

import pytest
import torch

from .helpers import FIXTURES, make_gaussian_model, make_tiny_clip, tiny_model


@pytest.fixture
def one_thread():
    """Tiny models: one thread is as fast, and far steadier when other jobs share the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def reference():
    return torch.load(FIXTURES / "tiny_reference.pt", weights_only=True)


@pytest.fixture(scope="session")
def official_path():
    return FIXTURES / "tiny_official.pth"


@pytest.fixture(scope="session")
def tiny_official(official_path):
    import infd_solve

    return infd_solve.load_model(official_path)


@pytest.fixture(scope="session")
def local_model():
    return tiny_model(normalize=False, seed=1)


@pytest.fixture(scope="session")
def normalized_model():
    return tiny_model(normalize=True, seed=2)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("solver_clip"))


def _cuda_param():
    available = torch.cuda.is_available()
    return pytest.param(("cuda", torch.float32), id="cuda-float32",
                        marks=[pytest.mark.cuda, pytest.mark.skipif(not available, reason="no CUDA device")])


@pytest.fixture(params=[pytest.param(("cpu", torch.float32), id="cpu-float32"),
                        pytest.param(("cpu", torch.float64), id="cpu-float64"), _cuda_param()])
def device_dtype(request):
    """Where and in which precision a test runs: CPU float32, CPU float64, and CUDA when the machine has it."""
    device, dtype = request.param
    return torch.device(device), dtype


@pytest.fixture(scope="session")
def gaussian_model():
    return make_gaussian_model()


