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


def model_fit(result, constraint) -> float:
    """How well the model alone explains the observation (dB): the result's own PSNR against it is about
    exact at any fit, since the data-consistency step puts the observed pixels back."""
    return result.report()[constraint.name]["model_fit"][0]


def test_inpainting_a_prior_sample_is_explained_by_the_model(model, prior_image):
    image = F.adaptive_avg_pool2d(prior_image, 64)
    c = MaskedObservation(image, mask=KNOWN)
    result = infd_solve.Solver(model, progress=False).solve([c], seed=0)
    assert result.report()[c.name]["psnr"][0] >= 30
    assert model_fit(result, c) >= 35  # a sample of the model: the model alone explains it
    assert result.latent.norm() < latent_norm_bound(model)


def test_super_resolution_x8_recovers_a_prior_sample(model, prior_image):
    low = F.avg_pool2d(prior_image, 8)  # 32 x 32
    c = LowResObservation(low)
    result = infd_solve.Solver(model, progress=False).solve([c], seed=0)
    assert result.report()[c.name]["psnr"][0] >= 35  # measurement consistency
    assert model_fit(result, c) >= 35
    assert psnr(result.render(256).clamp(-1, 1), prior_image).item() >= 40  # the truth itself


def test_few_steps_stay_stable(model, prior_image):
    """10 steps, a fifth of the default (the default's own run is the test above)."""
    c = LowResObservation(F.avg_pool2d(prior_image, 8))
    result = infd_solve.Solver(model, steps=10, progress=False).solve([c], seed=0)
    assert model_fit(result, c) >= 35
    assert result.latent.norm() < latent_norm_bound(model)


def test_held_out_scene_with_finer_detail_does_not_diverge(model):
    """Inpainting at 256, a size users have, of a scene the model never saw."""
    photo = scene_tensor(TEST_SEED_OFFSET + 7, 256)
    c = MaskedObservation(photo, mask=KNOWN)
    result = infd_solve.Solver(model, progress=False).solve([c], seed=0)
    assert result.latent.norm() < latent_norm_bound(model)
    assert result.report()[c.name]["psnr"][0] >= 45  # the known pixels are kept
    assert model_fit(result, c) >= 27  # and the model follows them, so it is trusted
    assert result.report()[c.name]["trust"][0] > 0.99


def test_observations_refine_by_default_and_clip_boxes_do_not(model, tiny_clip):
    from infd_solve.constraints import ClipBox

    solver = infd_solve.Solver(model, steps=2, progress=False)
    observed = solver.solve([LowResObservation(torch.zeros(1, 3, 8, 8))], seed=0)
    assert len(observed.history["timesteps"]) == 2 + infd_solve.solver.DEFAULT_REFINE_STEPS
    clip_only = solver.solve([ClipBox("clouds", clip=tiny_clip)], seed=0)
    assert len(clip_only.history["timesteps"]) == 2
    with pytest.raises(ValueError, match="no constraint opts into refinement"):
        infd_solve.Solver(model, steps=2, refine_steps=5, progress=False).solve([ClipBox("clouds", clip=tiny_clip)])
