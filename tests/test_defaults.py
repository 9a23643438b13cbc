"""The shipped model with the library's defaults (no tuning arguments) solves observations at any size.

A sample of the model's own prior is an image it can represent exactly, so its observations have a known
answer; a held-out procedural scene has finer detail than the model knows and must not make guidance diverge.
"""

import pytest
import shapely
import torch
import torch.nn.functional as F

import infd_solve
from infd_solve.constraints import LowResObservation, MaskedObservation
from infd_solve.data import TEST_SEED_OFFSET, scene_tensor
from infd_solve.metrics import psnr
from infd_solve.regions import CANVAS

pytestmark = pytest.mark.slow  # the shipped model, real solves at realistic sizes

KNOWN = shapely.difference(CANVAS, shapely.box(0.3, 0.3, 0.7, 0.7))


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture(scope="module")
def model():
    return infd_solve.load_model("default")


@pytest.fixture(scope="module")
def prior_image(model):
    """A prior sample rendered at 256."""
    z = model.sample(1, steps=50, generator=[torch.Generator().manual_seed(1000)], progress=False)
    with torch.no_grad():
        return model.render(model.decode(z), 256).clamp(-1, 1)


def latent_norm_bound(model):
    # unit-variance scaled latents have norm ~sqrt(numel); far above means guidance pushed off the prior
    c, h, w = model.config.z_shape
    return 3 * (c * h * w) ** 0.5 / model.config.latent_scale


@pytest.mark.parametrize("size", [64, 256])
def test_inpainting_keeps_the_known_region_at_any_size(model, prior_image, size):
    image = F.adaptive_avg_pool2d(prior_image, size)
    c = MaskedObservation(image, mask=KNOWN)
    result = infd_solve.Solver(model, progress=False).solve([c], seed=0)
    assert result.report()[c.name]["psnr"][0] >= 30
    assert result.latent.norm() < latent_norm_bound(model)


def test_super_resolution_x8_recovers_a_prior_sample(model, prior_image):
    low = F.avg_pool2d(prior_image, 8)  # 32 x 32
    c = LowResObservation(low)
    result = infd_solve.Solver(model, progress=False).solve([c], seed=0)
    assert result.report()[c.name]["psnr"][0] >= 35  # measurement consistency
    assert psnr(result.render(256).clamp(-1, 1), prior_image).item() >= 40  # the truth itself


@pytest.mark.parametrize("steps", [10, 25])
def test_fewer_steps_stay_stable(model, prior_image, steps):
    c = LowResObservation(F.avg_pool2d(prior_image, 8))
    result = infd_solve.Solver(model, steps=steps, progress=False).solve([c], seed=0)
    assert result.report()[c.name]["psnr"][0] >= 35
    assert result.latent.norm() < latent_norm_bound(model)


def test_held_out_scene_with_finer_detail_does_not_diverge(model):
    photo = scene_tensor(TEST_SEED_OFFSET + 7, 256)
    c = MaskedObservation(photo, mask=KNOWN)
    result = infd_solve.Solver(model, progress=False).solve([c], seed=0)
    assert result.latent.norm() < latent_norm_bound(model)
    assert result.report()[c.name]["psnr"][0] >= 25


def test_observations_refine_by_default_and_clip_boxes_do_not(model, tiny_clip):
    from infd_solve.constraints import ClipBox

    solver = infd_solve.Solver(model, steps=2, progress=False)
    observed = solver.solve([LowResObservation(torch.zeros(1, 3, 8, 8))], seed=0)
    assert len(observed.history["timesteps"]) == 2 + infd_solve.solver.DEFAULT_REFINE_STEPS
    clip_only = solver.solve([ClipBox("clouds", clip=tiny_clip)], seed=0)
    assert len(clip_only.history["timesteps"]) == 2
    with pytest.raises(ValueError, match="no constraint opts into refinement"):
        infd_solve.Solver(model, steps=2, refine_steps=5, progress=False).solve([ClipBox("clouds", clip=tiny_clip)])
