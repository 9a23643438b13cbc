"""The shipped default models: load offline and fast, render locally, stay scale-consistent."""

import time

import pytest
import torch

import infd_solve
from infd_solve import pretrained
from infd_solve.data import TEST_SEED_OFFSET, scene_tensor
from infd_solve.metrics import area_downsample, psnr, seam_ratio


@pytest.fixture(scope="module")
def default():
    start = time.perf_counter()
    model = infd_solve.load_model("default")
    return model, time.perf_counter() - start


def test_default_loads_offline_in_under_5_seconds(default):
    model, seconds = default
    assert seconds < 5
    assert model.unet is not None and model.config.z_shape[1] >= 16
    start = time.perf_counter()
    clip = infd_solve.load_clip("default")
    assert time.perf_counter() - start < 5 and clip.size > 0
    total = sum(p.stat().st_size for p in pretrained.ROOT.rglob("*") if p.is_file())
    assert total <= 60 * 2**20  # all shipped weights together


def test_default_renderer_is_local_and_scale_consistent(default):
    model, _ = default
    assert model.renderer.is_local
    with torch.no_grad():
        phi = model.decode(model.encode(scene_tensor(TEST_SEED_OFFSET + 1, model.config.input_size[0])))
        full = model.render(phi, 256)
        box = (0.25, 0.5, 0.5, 0.75)
        assert (model.render(phi, 64, box) - full[..., 128:192, 64:128]).abs().max() < 1e-5  # crop = crop
        fine = model.render(phi, 256, box)  # the box at 1024 pixel density
        assert psnr(area_downsample(fine, 4), full[..., 128:192, 64:128]).item() >= 32


def test_default_draws_no_seams_at_cell_borders(default):
    """Rendered far beyond its field's size, a sample shows no line at the feature-cell borders and no bend
    (slope jump) at the cell centres."""
    model, _ = default
    z = model.sample(2, steps=10, generator=[torch.Generator().manual_seed(s) for s in (0, 1)], progress=False)
    with torch.no_grad():
        phi = model.decode(z)
        for size in (1024, 2048):  # the same interior quarter box (on the cell lattice) at both densities
            image, cell = model.render(phi, size // 4, (0.25, 0.25, 0.5, 0.5)), size // phi.shape[-1]
            seams, bends = seam_ratio(image, cell), seam_ratio(image, cell, order=2)
            assert max(seams) <= 1.5 and max(bends) <= 2, (size, seams, bends)


def test_default_reconstructs_held_out_scenes(default):
    model, _ = default
    size = model.config.input_size[0]
    scores = []
    with torch.no_grad():
        for seed in range(TEST_SEED_OFFSET + 100, TEST_SEED_OFFSET + 104):
            phi = model.decode(model.encode(scene_tensor(seed, size)))
            scores.append(psnr(model.render(phi, 128), scene_tensor(seed, 128)).item())
    assert min(scores) > 20  # blurry beyond the input size, but the scene is there (measured ~24-30 dB)


def test_default_samples_are_images(default):
    model, _ = default
    z = model.sample(2, steps=10, generator=[torch.Generator().manual_seed(s) for s in (0, 1)], progress=False)
    with torch.no_grad():
        images = model.render(model.decode(z), 64)
    assert torch.isfinite(images).all()
    assert images.std() > 0.05 and images.abs().mean() < 1.0  # not blank, not saturated
