"""The seam-ratio metric (lines at feature-cell borders) and eval_default's seam section."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from infd_solve.metrics import latent_block_ratio, seam_ratio

from .helpers import tiny_model


def smooth_images(batch=2, size=128, seed=0):
    """Low-frequency random images with no preferred position within any cell."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 3, 11, 11, generator=g)
    return F.interpolate(coarse, size=size, mode="bicubic", align_corners=False)


# ------------------------------------------------------------------------------------------------ metric
def test_seam_ratio_is_about_one_without_lines():
    sx, sy = seam_ratio(smooth_images(), 16)
    assert 0.8 < sx < 1.3 and 0.8 < sy < 1.3


def test_seam_ratio_finds_lines_every_cell_along_their_axis():
    images = smooth_images()
    lines = images.clone()
    lines[..., ::16] += 0.5  # vertical lines: a jump between horizontal neighbours
    sx, sy = seam_ratio(lines, 16)
    assert sx > 5 and sy < 1.3
    sx, sy = seam_ratio(lines.transpose(-1, -2), 16)
    assert sx < 1.3 and sy > 5
    # lines every 16 px seen with the wrong cell size (12) spread over positions: a weaker, off-grid ratio
    assert seam_ratio(lines, 12)[0] < seam_ratio(lines, 16)[0]


def test_latent_block_ratio_finds_a_patchwork_of_latent_cells():
    """Each 16-px cell of a 8-cell canvas given its own brightness: the block ratio sees it, at the latent's
    cell size; the smooth images pass. The edge cells are left out, so a frame around the canvas is not seen."""
    images = smooth_images()
    g = torch.Generator().manual_seed(1)
    blocks = images + 0.5 * torch.randn(2, 3, 8, 8, generator=g).repeat_interleave(16, -1).repeat_interleave(16, -2)
    assert min(latent_block_ratio(blocks, 8)) > 5
    assert max(latent_block_ratio(images, 8)) < 1.3
    framed = images.clone()
    framed[..., :, :4] -= 1.0
    assert latent_block_ratio(framed, 8)[0] < 1.3
    with pytest.raises(ValueError, match="8 cells"):
        latent_block_ratio(images[..., :100], 8)


def test_bend_ratio_finds_slope_jumps_that_seam_ratio_misses():
    """A tent profile with peaks at every cell centre (what bilinear interpolation gives) has no line at all,
    only a bend: order=2 sees it, order=1 does not."""
    x = torch.arange(128, dtype=torch.float64)
    tent = 1 - ((x % 16) - 8).abs() / 8  # peaks at the centres of 16-px cells, troughs at their borders
    images = smooth_images() + 0.5 * tent
    assert max(seam_ratio(images, 16)) < 1.3
    bends = seam_ratio(images, 16, order=2)
    assert bends[0] > 3 and bends[1] < 1.3
    assert max(seam_ratio(smooth_images(), 16, order=2)) < 1.3


def test_seam_ratio_ignores_brightness_scale():
    images = smooth_images()
    images[..., 8::16, :] -= 0.3
    assert seam_ratio(images, 16) == pytest.approx(seam_ratio(3 * images + 1, 16))


@pytest.mark.parametrize("images, cell", [(torch.zeros(3, 64, 64), 8), (torch.zeros(1, 3, 64, 64), 1),
                                          (torch.zeros(1, 3, 64, 64), 7.5), (torch.zeros(1, 3, 8, 64), 8)])
def test_seam_ratio_rejects_bad_input(images, cell):
    with pytest.raises(ValueError):
        seam_ratio(images, cell)
    with pytest.raises(ValueError, match="order"):
        seam_ratio(torch.zeros(1, 3, 64, 64), 8, order=3)


def test_eval_seams_measure_renders_on_the_cell_lattice():
    """eval_default's seam section: whole canvases less the edge cells, and cell-aligned windows."""
    from infd_solve.metrics import field_seam_ratios as seams

    model = tiny_model(normalize=False, seed=2, with_unet=False)
    with torch.no_grad():
        phis = [model.decode(torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(s))) for s in (0, 1)]
    ratios = seams(model, phis, phis[0].shape[-1], np.random.default_rng(0), sizes=(128, 256, 100), window=96,
                   whole=128)
    assert set(ratios) == {128, 256}  # 100 px is not a whole number of pixels per cell: skipped
    assert all(set(kinds) == {"seam", "bend"} for kinds in ratios.values())
    assert all(r >= 1 for kinds in ratios.values() for pair in kinds.values() for r in pair)


def test_eval_default_cell_patterns_of_the_shipped_model_and_the_truth():
    """eval_default's latent-cell block ratio and field seam ratios on the shipped model (two samples, two
    reconstructions) and two held-out scenes: the shipped model draws no blocks, neither its prior nor its
    autoencoder (both are smooth across latent cells); the truth's value stands beside them."""
    import infd_solve
    from infd_solve.data import TEST_SEED_OFFSET, sample_scene

    from .helpers import load_recipe

    eval_default = load_recipe("eval_default")
    model = infd_solve.load_model("default")
    scenes = [sample_scene(TEST_SEED_OFFSET + i) for i in range(2)]
    z = model.sample(2, steps=5, generator=[torch.Generator().manual_seed(s) for s in (0, 1)], progress=False)
    with torch.no_grad():
        groups = {"samples": [model.decode(z[i : i + 1]) for i in range(2)],
                  "reconstructions": eval_default.reconstructed_fields(model, scenes)}
    table = eval_default.cell_patterns(model, groups, scenes, seed=0, size=256, seam_sizes=(256, 512))
    block = "latent-cell block ratio @256 (along x, along y): "
    assert all(1 <= r < 1.5 for name in ("samples", "reconstructions") for r in table[block + name])
    assert all(1 <= r < 3 for r in table[block + "truth"])
    for suffix in ("", ": reconstructions"):  # sample rows keep their old names
        assert all(1 <= r < 1.3 for r in table[f"seam ratio @512 (along x, along y){suffix}"])
        assert len(table[f"bend ratio @256 (along x, along y){suffix}"]) == 2
    without_samples = eval_default.cell_patterns(model, groups | {"samples": []}, scenes, seed=0, size=256,
                                                 seam_sizes=(256,))
    assert "seam ratio @256 (along x, along y)" not in without_samples
    assert without_samples[block + "reconstructions"] == table[block + "reconstructions"]
