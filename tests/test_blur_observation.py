"""BlurObservation: its operator (a true convolution with mirrored borders), the adjoint, the kernels, how the
kernel scales onto a coarser guidance grid, and the constraint in solves and layouts."""

import json
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import infd_solve
from infd_solve.constraints import BlurObservation
from infd_solve.operators.blur import (blur, blur_transpose, gaussian_kernel, load_kernel, motion_kernel,
                                       resample_kernel)
from infd_solve.data import TEST_SEED_OFFSET, scene_tensor
from infd_solve.io import save_image
from infd_solve.layout import LayoutError, parse_layout
from infd_solve.metrics import psnr


def _random_kernel(h=7, w=11, seed=0):
    k = torch.rand(h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return k / k.sum()


def test_forward_is_a_direct_convolution_with_mirrored_borders():
    x = scene_tensor(TEST_SEED_OFFSET + 3, 64).double()
    k = _random_kernel()  # asymmetric: a correlation instead of a convolution would differ
    direct = F.conv2d(F.pad(x, (5, 5, 3, 3), mode="reflect"), k.flip(0, 1).expand(3, 1, 7, 11), groups=3)
    assert torch.allclose(blur(x, k), direct, atol=1e-12)
    assert not torch.allclose(blur(x, k.flip(0, 1)), direct, atol=1e-3)
    # a delta is the identity; a kernel shifted one pixel to the right moves the image right by one
    delta = torch.zeros(5, 5, dtype=torch.float64)
    delta[2, 2] = 1
    assert torch.allclose(blur(x, delta), x, atol=1e-12)
    shift = torch.zeros(5, 5, dtype=torch.float64)
    shift[2, 3] = 1
    assert torch.allclose(blur(x, shift)[..., 1:], x[..., :-1], atol=1e-12)


def test_adjoint_matches_the_dot_product_test_and_autograd():
    k = _random_kernel(9, 5, seed=1)
    gen = torch.Generator().manual_seed(2)
    u = torch.randn(2, 3, 20, 30, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 3, 20, 30, generator=gen, dtype=torch.float64)
    lhs, rhs = (blur(u, k) * v).sum(), (u * blur_transpose(v, k)).sum()
    assert abs(lhs - rhs) < 1e-10 * abs(lhs)
    u.requires_grad_(True)
    (vjp,) = torch.autograd.grad((blur(u, k) * v).sum(), u)
    assert torch.allclose(blur_transpose(v, k), vjp, atol=1e-12)


def test_constraint_operator_and_its_transpose_on_the_guidance_grid():
    c = BlurObservation(scene_tensor(TEST_SEED_OFFSET + 4, 64), {"type": "motion", "size": 15, "length": 9, "seed": 3},
                        max_side=32)
    assert c.size == (32, 32) and c.grid_kernel.shape == (9, 9)
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(1, 3, 32, 32, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 3, 32, 32, generator=gen, dtype=torch.float64)
    c.to("cpu", torch.float64)
    lhs, rhs = (c.guide(u) * v).sum(), (u * c.guide.adjoint(v)).sum()
    assert abs(lhs - rhs) < 1e-10 * abs(lhs)


def test_gaussian_kernel():
    k = gaussian_kernel(61, 3.0)
    assert k.shape == (61, 61) and k.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(k, k.T) and torch.equal(k, k.flip(0))
    offsets = torch.arange(61, dtype=torch.float64) - 30
    assert (k.sum(1) * offsets.square()).sum().item() == pytest.approx(9.0, rel=1e-6)  # variance sigma^2


def test_motion_kernel_is_a_seeded_line_of_the_given_length_and_angle():
    k = motion_kernel(31, length=15, angle=0.0)
    assert k.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert k[15].sum().item() == pytest.approx(1.0, abs=1e-9)  # horizontal: all in the centre row
    offsets = torch.arange(31, dtype=torch.float64) - 15
    # a uniform segment of length L has variance L^2 / 12 (plus the splat's sub-pixel spread)
    assert (k.sum(0) * offsets.square()).sum().item() == pytest.approx(15**2 / 12, rel=0.02)
    vertical = motion_kernel(31, length=15, angle=90.0)
    assert vertical[:, 15].sum().item() == pytest.approx(1.0, abs=1e-9)
    diagonal = motion_kernel(31, length=15, angle=45.0)  # counter-clockwise, rows down: up and to the right
    assert diagonal[10, 20] > 0 and diagonal[10, 10] == 0
    for seed in range(3):
        a = motion_kernel(31, 15, seed=seed)
        assert torch.equal(a, motion_kernel(31, 15, seed=seed)) and torch.allclose(a, a.flip(0, 1), atol=1e-15)
    assert not torch.equal(motion_kernel(31, 15, seed=0), motion_kernel(31, 15, seed=1))


def test_rebinned_kernel_conserves_weight_and_scales_its_width():
    g = gaussian_kernel(61, 3.0)
    assert resample_kernel(g, 1.0) is g
    half = resample_kernel(g, 0.5)
    assert half.shape == (31, 31) and half.sum().item() == pytest.approx(1.0, abs=1e-12)
    offsets = torch.arange(31, dtype=torch.float64) - 15
    variance = (half.sum(1) * offsets.square()).sum().item()
    # sigma * s = 1.5 grid pixels, widened only by the binning (Sheppard: about (1 + s^2) / 12 grid px^2)
    assert 1.5**2 <= variance <= 1.5**2 + 0.15
    line = resample_kernel(motion_kernel(61, length=31, angle=0.0), 0.25)
    assert line.sum(0).gt(0).sum().item() in (8, 9, 10)  # 31 pixels long -> about 31 / 4 grid pixels
    assert line.sum().item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("kernel", [{"type": "gaussian", "size": 61, "sigma": 3.0},
                                    {"type": "motion", "size": 61, "length": 31, "seed": 4}])
def test_guidance_grid_sees_what_the_large_observation_shows(kernel):
    """On a 512 observation guided on a 256 grid, the rebinned kernel on the downsampled truth explains the
    downsampled observation far better than the kernel used as given would."""
    truth = scene_tensor(TEST_SEED_OFFSET + 5, 512)
    c = BlurObservation(blur(truth, load_kernel(kernel).float()), kernel, max_side=256)
    assert c.size == (256, 256)
    small = F.interpolate(truth, size=256, mode="bilinear", antialias=True)
    rebinned = psnr(blur(small, c.grid_kernel), c.observed).item()
    as_given = psnr(blur(small, c.kernel), c.observed).item()
    assert rebinned > 50 and rebinned > as_given + 15


def test_loss_and_score_at_the_truth():
    truth = scene_tensor(TEST_SEED_OFFSET + 6, 48)
    k = {"type": "gaussian", "size": 9, "sigma": 1.5}
    c = BlurObservation(blur(truth, load_kernel(k).float()), k)
    assert c.loss(truth).item() < 1e-10 and c.score(truth)["psnr"].item() > 60
    noisy = BlurObservation(blur(truth, load_kernel(k).float()), k, noise_sigma=0.1)
    off = truth + 0.05
    # the noise's share (sigma^2) is taken off the mean squared residual, floored at 0
    assert noisy.loss(truth).item() == 0 and noisy.loss(off * 3).item() == pytest.approx(c.loss(off * 3).item() - 0.01)


def test_kernel_inputs_and_errors(tmp_path):
    k = _random_kernel(3, 5)
    np.save(tmp_path / "k.npy", (k * 7).numpy())
    assert torch.allclose(load_kernel(tmp_path / "k.npy"), k)
    assert torch.allclose(load_kernel((k * 3).tolist()), k)
    save_image(torch.ones(3, 5, 5) * 2 - 1, tmp_path / "box.png")
    with pytest.warns(UserWarning, match="converted to grayscale"):
        assert torch.allclose(load_kernel(tmp_path / "box.png"), torch.full((5, 5), 1 / 25, dtype=torch.float64))
    image = torch.zeros(1, 3, 16, 16)
    cases = [(torch.ones(4, 5), "height must be odd"), (-k, "non-negative"), (torch.zeros(3, 3), "no weight"),
             ({"type": "box"}, "kernel.type must be one of"), ({"type": "gaussian", "sigma": -1}, "kernel.sigma"),
             ({"type": "motion", "lenght": 3}, "unknown field 'lenght'"), (torch.ones(41, 41), "too large"),
             ("nothing.npy", "no kernel file"), (7, "must be a 2-D array")]
    for bad, match in cases:
        with pytest.raises(ValueError, match=match):
            BlurObservation(image, bad)


def test_in_a_layout_with_a_kernel_file(tmp_path):
    truth = scene_tensor(TEST_SEED_OFFSET + 7, 32)
    k = motion_kernel(7, 5, angle=30.0)
    np.save(tmp_path / "motion.npy", k.numpy())
    save_image(blur(truth, k.float())[0], tmp_path / "blurred.png")
    item = {"type": "blur", "image": "blurred.png", "kernel": "motion.npy", "box": [0, 0, 0.5, 0.5]}
    layout = {"canvas": 64, "items": [item]}
    (tmp_path / "layout.json").write_text(json.dumps(layout))
    _, (c,) = parse_layout(tmp_path / "layout.json")
    assert isinstance(c, BlurObservation) and c.box == (0, 0, 0.5, 0.5) and c.refine
    assert c.label == "blur: blurred.png" and (tmp_path / "motion.npy").resolve() in c.input_files
    layout["items"][0]["kernel"] = {"type": "gaussian", "size": 8}
    with pytest.raises(LayoutError, match=r"items\[0\]\.kernel: .*size must be odd"):
        parse_layout(layout, base_dir=tmp_path)


@pytest.mark.parametrize("max_side, ratio", [(256, 0.6), (16, 0.85)])  # its own grid; a grid half as fine
def test_guidance_fits_a_blurred_observation(gaussian_model, one_thread, max_side, ratio):
    z = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        truth = gaussian_model.render(gaussian_model.decode(z), 32)
    k = {"type": "motion", "size": 9, "length": 6, "seed": 0}
    c = BlurObservation(blur(truth, load_kernel(k).float()).clamp(-1, 1), k, max_side=max_side)
    # guidance alone (no refinement, no data-consistency correction), at the default scale and weight
    options = {"refine_steps": 0, "consistency": False, "progress": False}
    guided = infd_solve.Solver(gaussian_model, **options).solve([c], seed=1)
    plain = infd_solve.Solver(gaussian_model, guidance_scale=0.0, **options).solve([c], seed=1)
    assert guided.history["loss"]["blur"][-1] < ratio * plain.history["loss"]["blur"][-1]
    assert guided.report()["blur"]["psnr"][0] > plain.report()["blur"]["psnr"][0] + 0.5
