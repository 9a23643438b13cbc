"""The crispness and artifact measures of ``recipes/eval_default.py`` (gradient magnitude, the canvas frame, long
lines, invented thin lines, gradient concentration) and the renderer's padding at the canvas edge, which removes
the frame zero padding draws."""

import math

import pytest
import torch
import torch.nn.functional as F

import infd_solve
from infd_solve import INFDModel
from infd_solve.data import TEST_SEED_OFFSET, scene_tensor
from infd_solve.metrics import (edge_gradient_ratio, gradient_concentration, gradient_magnitude, line_scores,
                                spurious_line_share, thin_line_map)
from infd_solve.models.renderer import RendererConfig

from .helpers import tiny_config


def local_model(padding: str, seed: int = 0) -> INFDModel:
    config = tiny_config(normalize=False, with_unet=False)
    config.renderer = RendererConfig(feature_channels=32, hidden_channels=32, normalize=False,
                                     feature_sampling="bicubic", coord_encoding="none", padding=padding)
    torch.manual_seed(seed)
    return INFDModel(config).eval()


def smooth(batch=2, size=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(batch, 3, 9, 9, generator=g), size=size, mode="bicubic", align_corners=False)


def edge_bands(image: torch.Tensor, width: int = 16) -> torch.Tensor:
    """The four ``width``-row bands along the edges of a square image, each rotated so row 0 is on the edge."""
    return torch.cat([image[..., :width, :], image.flip(-2)[..., :width, :],
                      image.transpose(-1, -2)[..., :width, :], image.transpose(-1, -2).flip(-2)[..., :width, :]])


# ------------------------------------------------------------------------------------------------ padding
def test_reflect_padding_renders_a_uniform_field_uniformly_up_to_the_canvas_edge():
    """Every renderer input is constant for a constant field, so the canvas should be too: with reflect
    padding it is, edges included; zero padding draws a frame."""
    spread = {}
    for padding in ("zeros", "reflect"):
        with torch.no_grad():
            image = local_model(padding).render(torch.full((1, 32, 8, 8), 0.3), 48)
        spread[padding] = float((image - image[..., 24:25, 24:25]).abs().max())
    assert spread["reflect"] < 1e-5 < 1e-2 < spread["zeros"], spread


@pytest.mark.parametrize("box", [(0.0, 0.0, 0.5, 0.25), (0.5, 0.75, 1.0, 1.0), (0.25, 0.125, 0.75, 0.5)])
def test_with_reflect_padding_a_box_or_a_tile_is_still_exactly_the_crop_of_the_whole_render(box):
    """At the canvas edge the box and the whole render pad the same grid edge; elsewhere the halo decides."""
    model = local_model("reflect")
    with torch.no_grad():
        phi = model.decode(torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)))
        full = model.render(phi, 96)
        t, l, b, r = (round(v * 96) for v in (box[1], box[0], box[3], box[2]))
        assert (model.render(phi, (b - t, r - l), box) - full[..., t:b, l:r]).abs().max() < 1e-5
        assert (model.render_image(phi, 96, tile=40) - full).abs().max() < 1e-5


@pytest.mark.parametrize("size", [(1, 1), (1, 7), (5, 1), (2, 2)])
def test_reflect_padding_renders_grids_too_thin_to_mirror(size):
    with torch.no_grad():
        image = local_model("reflect").render(torch.randn(1, 32, 8, 8), size)
    assert image.shape == (1, 3, *size) and torch.isfinite(image).all()


def test_renderer_config_names_a_bad_padding():
    with pytest.raises(ValueError, match="padding"):
        RendererConfig(padding="circular")


def test_the_shipped_model_draws_no_frame_at_the_canvas_edge():
    """The default model's renderer was trained with zero padding; reflect padding at inference takes its
    outermost pixels from a frame (13x the interior's gradient at 1024) to the interior's level."""
    model = infd_solve.load_model("default")
    assert model.renderer.config.padding == "reflect"
    with torch.no_grad():
        z = torch.randn(2, *model.config.z_shape, generator=torch.Generator().manual_seed(0))
        image = model.render(model.decode(z), 256)
    assert 0.5 < edge_gradient_ratio(edge_bands(image)) < 2


# ------------------------------------------------------------------------------------------------ metrics
def test_gradient_magnitude_falls_with_blur():
    sharp = smooth() + 0.3 * torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    blurred = F.avg_pool2d(sharp, 5, 1, 2)
    assert (gradient_magnitude(blurred) < 0.5 * gradient_magnitude(sharp)).all()


def test_line_scores_find_long_lines_not_scattered_content():
    clean = smooth()
    grid = clean.clone()
    grid[..., :, 40] += 0.5  # one vertical line the full height
    vertical, horizontal = line_scores(grid)
    assert vertical > 1.5 * line_scores(clean)[0] and horizontal == pytest.approx(line_scores(clean)[1], rel=0.05)
    assert line_scores(grid.transpose(-1, -2))[1] == pytest.approx(vertical)


def test_edge_gradient_ratio_sees_a_frame():
    bands = 0.1 * smooth(size=64)[..., :16, :]
    framed = bands.clone()
    framed[..., 0, :] -= 0.5
    assert 0.7 < edge_gradient_ratio(bands) < 1.5 and edge_gradient_ratio(framed) > 5
    with pytest.raises(ValueError, match="strips"):
        edge_gradient_ratio(bands[..., :5, :])


def reflect_blur(images: torch.Tensor, k: int = 5) -> torch.Tensor:
    return F.avg_pool2d(F.pad(images, (k // 2,) * 4, mode="reflect"), k, 1)


def test_thin_line_map_scores_a_thin_line_far_above_a_step_edge_and_flat_content_not_at_all():
    edge, line = torch.zeros(2, 1, 1, 64, 64)
    edge[..., 32:] = 1
    line[..., 32] = 1
    assert float(thin_line_map(line).max()) == pytest.approx(0.399, abs=0.005)
    assert float(thin_line_map(edge).max()) < 0.08
    assert float(thin_line_map(torch.full((1, 3, 32, 32), 0.3)).max()) < 1e-9
    with pytest.raises(ValueError, match="too small"):
        thin_line_map(torch.zeros(1, 1, 4, 4))


def test_spurious_line_share_sees_invented_wavy_lines_on_real_scenes_and_not_blur():
    """Windows of held-out scenes at 1024 density: the truth itself invents nothing, a blurred copy next to
    nothing, two wavy dark contours drawn across each window (the adversarial renderer's artifact) a lot."""
    truth = torch.cat([scene_tensor(TEST_SEED_OFFSET + i, 128, (0.25, 0.5, 0.375, 0.625)) for i in range(4)])
    worms = truth.clone()
    for x in range(128):
        for row in (30, 80):
            worms[..., round(row + 6 * math.sin(x / 7)), x] -= 0.3
    assert spurious_line_share(truth, truth) == 0
    assert spurious_line_share(reflect_blur(truth), truth) < 0.02
    assert spurious_line_share(worms, truth) > 0.5
    with pytest.raises(ValueError, match="equal shapes"):
        spurious_line_share(truth[..., :64], truth)


def test_gradient_concentration_falls_with_mottling_and_blur_of_real_scenes():
    whole = torch.cat([scene_tensor(TEST_SEED_OFFSET + i, 256) for i in range(4)])
    noise = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mottled = whole + 0.08 * F.interpolate(noise, size=256, mode="bicubic", align_corners=False)
    sharp = gradient_concentration(whole)
    assert (sharp > 0.4).all()
    assert (gradient_concentration(mottled) < sharp - 0.05).all()
    assert (gradient_concentration(reflect_blur(whole)) < sharp - 0.02).all()
    with pytest.raises(ValueError, match="top"):
        gradient_concentration(whole, top=1.5)


def test_eval_default_measures_crispness_against_the_truth_at_the_same_size(tmp_path):
    """The recipe's crispness section on the shipped model and held-out scenes: no frame, the truth's own
    frame ratio about 1; the gradient ratio is a finite, positive number (two scenes' random windows vary too much
    to say more)."""
    from .helpers import load_recipe

    table = load_recipe("eval_default").main(["--sections", "crispness", "--scenes", "2", "--steps", "10",
                                              "--threads", "1", "--out", str(tmp_path / "eval")])
    for size in (1024, 2048):
        samples, truth = table[f"canvas frame @{size}: outer 2 px / inner gradient, samples / truth"]
        assert 0.5 < samples < 2 and 0.7 < truth < 1.4
        assert 0.05 < table[f"gradient samples / truth @{size}"] < 5
    vertical, horizontal = table["lines across images @256 (vertical, horizontal): samples"]
    assert 0 < vertical < 1 and 0 < horizontal < 1
    samples, truth = table["gradient concentration @256: samples / truth"]
    assert 0.1 < samples < 1 and 0.4 < truth < 1
    assert (tmp_path / "eval.json").is_file() and (tmp_path / "eval.png").is_file()


def test_eval_default_reconstruction_rows_for_invented_lines_and_concentration():
    """The shipped renderer (no adversarial training) invents about as few thin lines as bicubic does, and its
    reconstructions at 256 concentrate their gradient less than the truth (they are blurred)."""
    import numpy as np

    from .helpers import load_recipe

    eval_default = load_recipe("eval_default")
    scenes = [eval_default.sample_scene(TEST_SEED_OFFSET + 10_000 + i) for i in range(2)]
    with torch.no_grad():
        table = eval_default.reconstruction(infd_solve.load_model("default"), scenes, np.random.default_rng(0))
    ours, classical = table[next(k for k in table if k.startswith("invented thin lines @1024"))]
    assert 0 <= ours < 0.1 and 0 <= classical < 0.1
    assert 0.1 < table["gradient concentration @256: reconstruction"] < table["gradient concentration @256: truth"]
