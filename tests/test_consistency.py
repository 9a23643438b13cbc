"""Data consistency: the residual correction keeps the user's pixels, reproduces a low-resolution input and a
blurred one, fills holes without a seam, holds at other render sizes, works for an operator written here, and
falls back to the classical answer (saying so) on a photo the model cannot explain."""

import pytest
import torch
import torch.nn.functional as F

import infd_solve
from infd_solve.baselines import bicubic, harmonic_fill
from infd_solve.consistency import Correction, correct_observation, interpolate, solve_residual, upsample
from infd_solve.constraints import LowResObservation, MaskedObservation, Observation
from infd_solve.data import TEST_SEED_OFFSET, scene_tensor
from infd_solve.fidelity import GaussianFidelity
from infd_solve.io import load_image
from infd_solve.operators import Blur, Downsample, Mask, gaussian_kernel
from infd_solve.rendering import FULL_CANVAS

from .helpers import REPO, colour_mix_operator

PHOTOS = REPO / "tests" / "fixtures" / "photos"


def _psnr(a, b, weight=None):
    return float(GaussianFidelity.psnr(a, b, weight).min())


# ------------------------------------------------------------------------------------------ the solve alone
def test_a_hole_is_filled_harmonically_and_known_values_are_met():
    """With a mask, the correction meets the known pixels (to 8-bit rounding) and, in the hole, is the harmonic
    fill of the residual: the same as an independent solver of Laplace's equation (red-black SOR)."""
    image = scene_tensor(TEST_SEED_OFFSET + 21, 160)
    mask = torch.ones(1, 1, 160, 160)
    mask[..., 40:130, 30:110] = 0
    r = solve_residual(Mask(mask), image * mask)
    assert _psnr(r, image, mask) > 55
    assert (r - harmonic_fill(image, mask)).abs().max() < 2 / 255


@pytest.mark.parametrize("make", [lambda: Downsample((96, 96), (24, 24)),
                                  lambda: Downsample((80, 80), (16, 16), "bicubic"),
                                  lambda: Blur(gaussian_kernel(9, 1.5), (64, 64)),
                                  lambda: colour_mix_operator((40, 40))],
                         ids=["area", "bicubic", "blur", "user operator"])
def test_any_linear_operator_is_explained(make):
    """Whatever an image behind the observation was, the correction explains the observation up to 8-bit
    rounding (the noise floor of the discrepancy principle)."""
    operator = make()
    behind = torch.rand(2, 3, *operator.input_size, generator=torch.Generator().manual_seed(3)) * 2 - 1
    b = operator(behind)
    r = solve_residual(operator, b)
    assert _psnr(operator(upsample(r, operator.input_size)), b) > 55


def test_with_noise_the_fit_stops_at_the_noise_level():
    truth = scene_tensor(TEST_SEED_OFFSET + 22, 96)
    operator = Blur(gaussian_kernel(15, 2.0), (96, 96))
    y = operator(truth) + 0.05 * torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(4))
    r = solve_residual(operator, y, noise_sigma=0.05)
    rms = (operator(r) - y).square().mean().sqrt().item()
    assert 0.03 < rms <= 0.05  # within the noise, not fitting it
    assert _psnr(r, truth) > _psnr(y, truth)


def test_the_models_fill_fades_into_a_hole_over_half_a_latent_cell():
    """A render that explains the known pixels is trusted (gain 1), but only near them: deeper into the hole the
    output becomes the harmonic fill, at any render size; a trust the user gives holds everywhere."""
    truth, guess = scene_tensor(TEST_SEED_OFFSET + 24, 128), scene_tensor(TEST_SEED_OFFSET + 25, 128)
    mask = torch.ones(1, 1, 128, 128)
    mask[..., 32:96, 32:96] = 0
    render = torch.where(mask > 0, truth, guess)  # the known pixels explained, the hole a guess
    fix = correct_observation(MaskedObservation(truth, mask=mask), render, cell=8.0)  # fades over 4 px
    given = correct_observation(MaskedObservation(truth, mask=mask, trust=1.0), render, cell=8.0)
    assert fix.gain.tolist() == [1.0] and given.depth is None
    out, kept, classical = fix.apply(render, FULL_CANVAS), given.apply(render, FULL_CANVAS), harmonic_fill(truth, mask)
    assert _psnr(out, truth, mask) > 55
    deep = (slice(None), slice(None), slice(50, 78), slice(50, 78))  # >= 18 px (4.5 fade lengths) from known pixels
    assert (out - classical)[deep].abs().max() < 0.03 < (kept - classical)[deep].abs().max()
    edge = (slice(None), slice(None), slice(40, 88), 32)  # the first unknown column: mostly the model's fill
    assert (out - kept)[edge].abs().mean() < 0.3 * (classical - kept)[edge].abs().mean()
    big = fix.apply(F.interpolate(render, size=256, mode="bicubic", align_corners=False), FULL_CANVAS)
    big_classical = F.interpolate(classical, size=256, mode="bicubic", align_corners=False)
    assert (big - big_classical)[..., 104:152, 104:152].abs().max() < 0.05


def test_interpolation_is_exact_on_its_own_lattice_and_smooth_elsewhere():
    r = torch.randn(1, 3, 10, 12, generator=torch.Generator().manual_seed(5))
    box = (0.2, 0.3, 0.8, 0.8)
    # the canvas at the lattice's own density: the box's pixels are the samples
    (r0, r1, c0, c1), values = interpolate(r, box, FULL_CANVAS, (20, 20))
    assert (r0, r1, c0, c1) == (6, 16, 4, 16) and torch.equal(values, r)
    # a finer grid over the box agrees with bicubic upsampling, and nothing outside the box is touched
    (r0, r1, c0, c1), values = interpolate(r, box, box, (40, 48))
    assert torch.allclose(values, F.interpolate(r, size=(40, 48), mode="bicubic", align_corners=False), atol=1e-5)
    correction = Correction("x", box, r, torch.ones(1), torch.zeros(1), [None])
    pixels = correction.apply(torch.zeros(1, 3, 20, 20), FULL_CANVAS)
    assert pixels[..., :6, :].abs().max() == 0 and pixels[..., :, 16:].abs().max() == 0


# ------------------------------------------------------------------------------------------ through the solver
@pytest.fixture(scope="module")
def model():
    return infd_solve.load_model("default").eval()


def _photo(name, size):
    return F.interpolate(load_image(PHOTOS / f"{name}.png"), size=(size, size), mode="area")


def _eight_bit(x):
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def test_the_fill_fades_only_where_nothing_else_constrains_the_hole(model):
    """Alone, a mask observation's trust fades into its hole (over half of the model's latent cell); with a
    constraint on the hole (here a colour), what that constraint drew is kept."""
    from infd_solve.consistency import correct
    from infd_solve.constraints import ColorMatch

    truth = scene_tensor(TEST_SEED_OFFSET + 26, 64)
    mask = torch.ones(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 0
    observation = MaskedObservation(truth, mask=mask)
    with torch.no_grad():
        field = model.decode(model.encode(truth))
    (alone,) = correct(model, field, [observation])
    (with_colour,) = correct(model, field, [observation, ColorMatch("#ff0000", box=(0.3, 0.3, 0.7, 0.7))])
    assert with_colour.depth is None and alone.depth is not None
    centre, edge = alone.depth[0, 0, 32, 32], alone.depth[0, 0, 32, 16]
    assert centre < 0.01 and edge > 0.5  # 16 and 1 px deep; it fades over 2 px, half of a 4 px latent cell


@pytest.mark.slow
def test_a_photo_keeps_its_known_pixels_and_its_hole_is_no_worse_than_a_harmonic_fill(model):
    photo = _eight_bit(_photo("astronaut", 96))
    mask = torch.ones(1, 1, 96, 96)
    mask[..., 34:62, 34:62] = 0
    observation = MaskedObservation(photo, mask=mask)
    result = infd_solve.Solver(model, progress=False).solve([observation], seed=0)
    out = _eight_bit(result.render(96))
    assert _psnr(out, photo, mask) >= 45
    classical = harmonic_fill(photo, mask)
    assert _psnr(out, photo, 1 - mask) >= _psnr(classical, photo, 1 - mask) - 1
    report = result.report()["observation"]
    assert report["psnr"][0] >= 45 and report["model_fit"][0] < 25 and report["trust"][0] < 1
    assert result.notes() and "unlike what the model knows" in result.notes()[0]


@pytest.mark.slow
def test_a_photo_comes_back_at_least_as_good_as_bicubic_and_consistent_at_any_size(model, tmp_path):
    truth = _photo("chelsea", 128)
    low = _eight_bit(F.adaptive_avg_pool2d(truth, 32))
    result = infd_solve.Solver(model, progress=False).solve([LowResObservation(low)], seed=0)
    out = _eight_bit(result.render(128))
    assert _psnr(out, truth) >= _psnr(bicubic(low, 128), truth) - 0.5
    for size in (128, 256):
        (path,) = result.save(tmp_path / f"sr{size}.png", size)
        assert _psnr(F.adaptive_avg_pool2d(load_image(path), 32), low) >= 40


@pytest.mark.slow
def test_a_blurred_photo_is_explained_at_noise_0_at_any_size(model, tmp_path):
    """Deblurring a photo: the result, blurred by the kernel, reproduces the image to >= 35 dB on its own grid,
    and so does the result saved at twice the size, area-averaged back (the data-consistency step guarantees it,
    so a short solve will do)."""
    from infd_solve.constraints import BlurObservation
    from infd_solve.operators.blur import blur, gaussian_kernel

    kernel = gaussian_kernel(9, 1.5)
    truth = _photo("coffee", 64)
    blurred = _eight_bit(blur(truth, kernel))
    solver = infd_solve.Solver(model, steps=8, refine_steps=10, progress=False)
    result = solver.solve([BlurObservation(blurred, kernel)], seed=0)
    (report,) = result.report().values()
    assert report["psnr"][0] >= 35 and report["model_fit"][0] < 35  # the model alone does not explain it
    (path,) = result.save(tmp_path / "big.png", 128)
    assert _psnr(blur(F.avg_pool2d(load_image(path), 2), kernel), blurred) >= 35


def test_a_users_operator_gets_the_guarantee(model):
    """An Observation with an operator written here guides, is scored, and its result explains the image."""
    truth = scene_tensor(TEST_SEED_OFFSET + 23, 48)
    camera = colour_mix_operator((48, 48))
    observation = Observation(camera(truth), camera, name="mixed")
    result = infd_solve.Solver(model, steps=10, refine_steps=5, progress=False).solve([observation], seed=0)
    (correction,) = result.corrections
    assert correction.name == "mixed"
    assert result.report()["mixed"]["psnr"][0] > 45
    assert _psnr(camera(result.render(48)), camera(truth)) > 45


def test_a_sample_of_the_model_is_trusted_and_needs_no_note(model):
    z = model.sample(1, steps=20, generator=[torch.Generator().manual_seed(2)], progress=False)
    with torch.no_grad():
        truth = model.render(model.decode(z), 64)
    low = F.adaptive_avg_pool2d(truth, 16)
    result = infd_solve.Solver(model, steps=20, progress=False).solve([LowResObservation(low)], seed=0)
    report = result.report()["low-res"]
    assert report["trust"] == [1.0] and not result.notes()
    assert report["psnr"][0] > 45
