"""Contract tests over every forward operator (the built-in ones and one written here, as a user would) and
the shared Gaussian data fidelity."""

import pytest
import torch

from infd_solve.data import TEST_SEED_OFFSET, scene_tensor
from infd_solve.fidelity import GaussianFidelity, weighted_mse
from infd_solve.operators import Blur, Downsample, Mask, Operator, coarsen_observation, resample

from .helpers import colour_mix_operator


def _mask(size=24):
    m = torch.ones(1, 1, size, size)
    m[..., 5:15, 8:20] = 0
    m[..., 0, :] = 0.5  # a soft row
    return m


OPERATORS = {
    "mask": lambda: Mask(_mask()),
    "area": lambda: Downsample((48, 48), (12, 12), "area"),
    "bicubic": lambda: Downsample((48, 48), (16, 16), "bicubic"),
    "render": lambda: Downsample((24, 24), (24, 24)),
    "area, non-integer": lambda: Downsample((50, 40), (15, 12), "area"),
    "blur": lambda: Blur({"type": "motion", "size": 7, "length": 5, "seed": 1}, (24, 24)),
    "user colour mix": lambda: colour_mix_operator((24, 24)),
}


@pytest.fixture(params=list(OPERATORS))
def operator(request):
    return OPERATORS[request.param]().to(dtype=torch.float64)


def test_shapes(operator):
    x = torch.randn(2, 3, *operator.input_size, dtype=torch.float64)
    assert operator(x).shape == (2, 3, *operator.output_size)
    assert operator.adjoint(operator(x)).shape == x.shape


def test_adjoint_passes_the_dot_product_test_and_matches_autograd(operator):
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(2, 3, *operator.input_size, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 3, *operator.output_size, generator=gen, dtype=torch.float64)
    lhs, rhs = (operator(u) * v).sum(), (u * operator.adjoint(v)).sum()
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)
    u.requires_grad_(True)
    (vjp,) = torch.autograd.grad((operator(u) * v).sum(), u)
    assert torch.allclose(operator.adjoint(v), vjp, atol=1e-10)


def test_operators_are_linear(operator):
    gen = torch.Generator().manual_seed(1)
    a, b = (torch.randn(1, 3, *operator.input_size, generator=gen, dtype=torch.float64) for _ in range(2))
    assert operator.linear
    assert torch.allclose(operator(2 * a - 3 * b), 2 * operator(a) - 3 * operator(b), atol=1e-10)


def test_coarsened_operators_see_what_the_coarsened_observation_shows(operator):
    """On a smooth image, the operator on a coarser grid, applied to the image resampled there, explains the
    full observation resampled there (weights included)."""
    coarse = operator.coarsened((operator.output_size[0] // 2, operator.output_size[1] // 2))
    if coarse is None:
        pytest.skip("this operator has no coarser form: guidance uses its full grid")
    x = scene_tensor(TEST_SEED_OFFSET + 11, operator.input_size).double()
    observed = coarsen_observation(operator(x), operator.weight, coarse.output_size)
    seen = coarse(resample(x, coarse.input_size))
    error = weighted_mse(seen, observed, coarse.weight)
    assert 10 * torch.log10(4 / error).item() > 30


def test_buffers_follow_to(operator):
    moved = operator.to(dtype=torch.float32)
    assert all(b.dtype == torch.float32 for b in moved.buffers())


def test_bad_operators_are_refused():
    with pytest.raises(ValueError, match="mode"):
        Downsample((8, 8), (4, 4), "nearest")
    with pytest.raises(ValueError, match="larger than input_size"):
        Downsample((8, 8), (16, 16))
    with pytest.raises(ValueError, match="weight"):
        Operator((4, 4), (4, 4), weight=torch.ones(1, 1, 3, 3))


def test_gaussian_fidelity():
    gen = torch.Generator().manual_seed(2)
    y = torch.rand(2, 3, 8, 8, generator=gen) * 2 - 1
    x = y + 0.1 * torch.randn(2, 3, 8, 8, generator=gen)
    mse = (x - y).square().flatten(1).mean(1)
    assert torch.allclose(GaussianFidelity(0.0).loss(x, y), mse)
    assert torch.allclose(GaussianFidelity(0.05).loss(x, y), (mse - 0.0025).clamp_min(0))
    assert torch.equal(GaussianFidelity(1.0).loss(x, y), torch.zeros(2))  # within the noise: nothing to fit
    # unobserved values neither add error nor dilute the mean
    weight = torch.zeros(1, 1, 8, 8)
    weight[..., :4, :] = 1
    wild = torch.where(weight.bool(), x, torch.full_like(x, 50.0))
    assert torch.allclose(weighted_mse(wild, y, weight), (x - y)[..., :4, :].square().flatten(1).mean(1))
    assert torch.isinf(GaussianFidelity.psnr(y, y)).all()
    assert GaussianFidelity.psnr(y + 0.02, y).allclose(torch.full((2,), 10 * torch.log10(torch.tensor(4 / 4e-4)).item(),
                                                                   dtype=torch.float64))
    with pytest.raises(ValueError, match="noise_sigma"):
        GaussianFidelity(-0.1)
