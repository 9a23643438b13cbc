"""Rendering at any box and size: locality, tiling modes, and input checks."""

import math

import pytest
import torch



@pytest.fixture(scope="module", autouse=True)
def no_grad():
    with torch.no_grad():
        yield


def field(model, seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    return model.decode(torch.randn(batch, 3, 8, 8, generator=g))


def crop(image, size, box):
    """Pixels of ``box`` cut out of a full-canvas render at ``size`` (box aligned to that pixel grid)."""
    h, w = size
    l, t, r, b = box
    return image[..., round(t * h): round(b * h), round(l * w): round(r * w)]


@pytest.mark.parametrize("sampling", ["nearest", "bilinear", "bicubic"])
def test_local_renderer_box_is_exact_crop(local_model, sampling, monkeypatch):
    assert local_model.renderer.is_local and local_model.renderer.receptive_radius == 6
    monkeypatch.setattr(local_model.renderer.config, "feature_sampling", sampling)
    phi = field(local_model)
    size = (96, 80)
    full = local_model.render(phi, size)
    # interior box, boxes touching each border, and a box of a few pixels near a corner
    for box in [(0.25, 0.125, 0.75, 0.5), (0.0, 0.0, 0.5, 0.25), (0.5, 0.75, 1.0, 1.0), (0.9, 0.0, 1.0, 1 / 24)]:
        h, w = round((box[3] - box[1]) * size[0]), round((box[2] - box[0]) * size[1])
        alone = local_model.render(phi, (h, w), box)
        assert (alone - crop(full, size, box)).abs().max().item() < 1e-5, box


def test_bilinear_features_are_continuous_across_cells(local_model, monkeypatch):
    """Nearest lookup makes a field rendered far beyond its size blocky; bilinear sampling does not."""
    phi = field(local_model, batch=1)
    jumps = {}
    for sampling in ("nearest", "bilinear"):
        monkeypatch.setattr(local_model.renderer.config, "feature_sampling", sampling)
        query = local_model.renderer.query(phi, *local_model_grid(256))  # 8 query pixels per feature cell
        feat = query[:, :32]
        jumps[sampling] = (feat[..., 1:] - feat[..., :-1]).abs().amax(dim=(0, 1, 2)).max().item()
    assert jumps["bilinear"] < 0.25 * jumps["nearest"]


def test_bicubic_features_bend_smoothly_at_cell_centres(local_model, monkeypatch):
    """Bilinear features are piecewise linear: their slope jumps at every cell centre; bicubic ones' does not."""
    phi = field(local_model, batch=1)
    coord, cell = local_model_grid(1024)  # 32 query pixels per cell; one row is enough
    bends = {}
    for sampling in ("bilinear", "bicubic"):
        monkeypatch.setattr(local_model.renderer.config, "feature_sampling", sampling)
        feat = local_model.renderer.query(phi, coord[:, 512:513], cell[:, 512:513])[:, :32]
        bends[sampling] = (feat[..., 2:] - 2 * feat[..., 1:-1] + feat[..., :-2]).abs().max().item()
    assert bends["bicubic"] < 0.3 * bends["bilinear"]


def test_bicubic_on_a_pixel_grid_matches_grid_sample():
    """The separable bicubic lookup (two matrix products) gives grid_sample's values and gradients, inside the
    canvas, on a halo past its edge, and on a non-square field."""
    import torch.nn.functional as F

    from infd_solve.models.renderer import _cubic_weights, _is_pixel_grid
    from infd_solve.rendering import pixel_grid

    g = torch.Generator().manual_seed(0)
    with torch.enable_grad():
        for phi_shape, box, rows, cols in [((2, 5, 8, 8), (0, 0, 1, 1), (-3, 40), (-3, 37)),
                                           ((1, 4, 6, 11), (0.3, 0.1, 0.7, 0.9), None, None)]:
            phi = torch.randn(*phi_shape, generator=g, requires_grad=True)
            coord, _ = pixel_grid(box, (37, 34), rows, cols)
            sheared = coord + 0.01 * coord.flip(-1)  # rows no longer share one y: grid_sample is used
            assert _is_pixel_grid(coord) and not _is_pixel_grid(sheared)
            reference = F.grid_sample(phi, coord.flip(-1).expand(len(phi), -1, -1, -1), mode="bicubic",
                                      padding_mode="border", align_corners=False)
            separable = _cubic_weights(coord[0, :, 0, 0], phi.shape[2]) @ phi @ _cubic_weights(
                coord[0, 0, :, 1], phi.shape[3]).T
            assert (separable - reference).abs().max().item() < 1e-5
            weights = torch.randn(reference.shape, generator=g)
            grad_ref, = torch.autograd.grad((reference * weights).sum(), phi)
            grad_sep, = torch.autograd.grad((separable * weights).sum(), phi)
            assert (grad_sep - grad_ref).abs().max().item() < 1e-4


def local_model_grid(size):
    from infd_solve.rendering import pixel_grid

    return pixel_grid((0, 0, 1, 1), (size, size))


def test_normalizing_renderer_box_is_not_a_crop(normalized_model):
    """The official renderer's GroupNorm makes a box alone differ from the crop: the gap handled elsewhere."""
    phi = field(normalized_model)
    full = normalized_model.render(phi, (64, 64))
    box = (0.25, 0.25, 0.75, 0.75)
    gap = (normalized_model.render(phi, (32, 32), box) - crop(full, (64, 64), box)).abs().max().item()
    assert gap > 1e-2


@pytest.mark.parametrize("size,tile", [((37, 53), 10), ((61, 29), 16), ((40, 40), 7)])
def test_exact_tiled_equals_single_call(normalized_model, size, tile):
    phi = field(normalized_model)
    single = normalized_model.render(phi, size)
    tiled = normalized_model.render_image(phi, size, tile=tile, mode="exact")
    assert (tiled - single).abs().max().item() < 1e-5
    # the official patchwise procedure is a different image on a normalizing renderer
    official = normalized_model.render_image(phi, size, tile=tile, pad=2, mode="official")
    assert (official - single).abs().max().item() > 1e-3


@pytest.mark.parametrize("size,tile", [((37, 53), 10), ((20, 64), 64)])
def test_local_tiled_is_one_pass_and_exact(local_model, size, tile):
    phi = field(local_model)
    calls = []
    hook = local_model.renderer.conv_in.register_forward_hook(lambda *a: calls.append(1))
    try:
        tiled = local_model.render_image(phi, size, tile=tile)
    finally:
        hook.remove()
    assert len(calls) == math.ceil(size[0] / tile) * math.ceil(size[1] / tile)  # one pass over the tiles
    assert (tiled - local_model.render(phi, size)).abs().max().item() < 1e-5


def test_render_is_differentiable_to_the_latent(local_model):
    z = torch.randn(1, 3, 8, 8, requires_grad=True)
    with torch.enable_grad():
        rgb = local_model.render(local_model.decode(z), (16, 16), (0.2, 0.2, 0.6, 0.6))
        rgb.square().mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


@pytest.mark.parametrize("box,needle", [
    ((0, 0, 1.2, 1), "outside the canvas"), ((-0.1, 0, 1, 1), "outside the canvas"),
    ((0.5, 0, 0.2, 1), "inverted or has zero area"), ((0.5, 0.5, 0.5, 0.9), "inverted or has zero area"),
    ((0, float("nan"), 1, 1), "NaN"), ((0, 0, 1), "four numbers"), ("abcd", "four numbers"),
])
def test_bad_box(local_model, box, needle):
    phi = field(local_model, batch=1)
    with pytest.raises(ValueError, match="box") as info:
        local_model.render(phi, 8, box)
    assert needle in str(info.value)


@pytest.mark.parametrize("size", [0, -3, (4, 0), (2.5, 3), (1, 2, 3), "8", True])
def test_bad_size(local_model, size):
    phi = field(local_model, batch=1)
    with pytest.raises(ValueError, match="size"):
        local_model.render(phi, size)
    with pytest.raises(ValueError, match="size"):
        local_model.render_image(phi, size)


def test_bad_latent_and_field(local_model):
    z = torch.randn(1, 3, 8, 8)
    z[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="z contains 1 NaN/inf"):
        local_model.decode(z)
    with pytest.raises(ValueError, match="z must be a B x 3 x H x W tensor, got shape \\(1, 4, 8, 8\\)"):
        local_model.decode(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="phi must be a B x 32"):
        local_model.render(torch.randn(1, 16, 8, 8), 8)
    with pytest.raises(ValueError, match="x must be a B x 3"):
        local_model.encode(torch.randn(3, 32, 32))
    phi = field(local_model, batch=1)
    with pytest.raises(ValueError, match="mode must be one of"):
        local_model.render_image(phi, 16, mode="fast")
    with pytest.raises(ValueError, match="tile must be a positive int"):
        local_model.render_image(phi, 16, tile=0)
