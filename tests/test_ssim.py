"""SSIM (``infd_solve.metrics.ssim``): cases with a known answer, and values of an independent implementation."""

import pytest
import torch
import torch.nn.functional as F

from infd_solve.data import scene_tensor
from infd_solve.metrics import ssim

C1, C2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2  # data range 2: images in [-1, 1]


def _scene(seed=1, size=48):
    return scene_tensor(1_000_000_000 + seed, size).double()


def test_identical_images_give_one():
    x = _scene()
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-12)
    two = torch.cat([x, _scene(2)])
    assert torch.allclose(ssim(two, two), torch.ones(2, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("a, b", [(0.2, 0.5), (-0.7, 0.1), (0.0, -1.0)])
def test_constant_images_give_the_luminance_term(a, b):
    x, y = (torch.full((1, 3, 16, 16), v, dtype=torch.float64) for v in (a, b))
    # zero variances: the contrast-structure term is C2 / C2 = 1
    assert ssim(x, y).item() == pytest.approx((2 * a * b + C1) / (a * a + b * b + C1), rel=1e-9)


def test_a_constant_offset_leaves_only_the_luminance_term():
    x = _scene(3) * 0.5  # room for the offset without clipping
    c = 0.3
    # the local means under an 11x11 Gaussian window (sigma 1.5), built here as one 2-D filter
    taps = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-taps.square() / (2 * 1.5**2))
    window = (g[:, None] * g[None, :] / g.sum() ** 2).expand(3, 1, 11, 11)
    mu = F.conv2d(x, window, groups=3)
    expected = ((2 * mu * (mu + c) + C1) / (mu.square() + (mu + c).square() + C1)).mean()
    assert ssim(x, x + c).item() == pytest.approx(expected.item(), rel=1e-9)


def test_matches_an_independent_implementation():
    # values from pytorch-msssim 1.0.0 (ssim(x, y, data_range=2.0), float64 inputs), pinned
    x = _scene(1)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert ssim(x, (x + 0.1 * noise).clamp(-1, 1)).item() == pytest.approx(0.6906103905119512, abs=2e-6)
    assert ssim(x, _scene(2)).item() == pytest.approx(0.05483120011306097, abs=2e-6)


def test_symmetric_and_lower_for_more_noise():
    x = _scene(4)
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    values = [ssim(x, x + s * noise).item() for s in (0.02, 0.1, 0.4)]
    assert values[0] > values[1] > values[2]
    y = x + 0.1 * noise
    assert ssim(x, y).item() == pytest.approx(ssim(y, x).item(), rel=1e-12)


def test_refuses_bad_shapes():
    with pytest.raises(ValueError, match="equal shape"):
        ssim(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 17))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
