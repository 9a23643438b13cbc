"""The crispness and artifact measures of ``recipes/eval_default.py`` (gradient magnitude, the canvas frame, long
lines) and the renderer's padding at the canvas edge, which removes the frame zero padding draws."""

import pytest
import torch
import torch.nn.functional as F

import infd_solve
from infd_solve import INFDModel
from infd_solve.metrics import edge_gradient_ratio, gradient_magnitude, line_scores
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
    assert (tmp_path / "eval.json").is_file() and (tmp_path / "eval.png").is_file()
