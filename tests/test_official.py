"""Official checkpoints: every fixture tensor reproduced within 1e-4, and the real FFHQ layout accepted."""

import re

import pytest
import torch

import infd_solve
from infd_solve.models.official import config_from_official, convert_state_dict
from infd_solve.rendering import pixel_grid

from .helpers import ffhq_layout

TOL = 1e-4


def maxdiff(a, b):
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", autouse=True)
def no_grad():
    with torch.no_grad():
        yield


def test_autoencoder_matches_official(tiny_official, reference):
    m, ref = tiny_official, reference
    assert maxdiff(m.encode(ref["x"]), ref["z"]) < TOL
    z_q, _, indices = m.quantizer(ref["z"])
    assert maxdiff(z_q, ref["z_q"]) < TOL
    assert torch.equal(indices, ref["z_q_indices"])
    assert maxdiff(m.decode(ref["z"]), ref["z_dec"]) < TOL


def test_grids_match_official(reference):
    for k, size in ((0, (48, 48)), (1, (20, 30))):
        coord, cell = pixel_grid(tuple(reference[f"box_{k}"].tolist()), size)
        assert maxdiff(coord[0], reference[f"coord_{k}"][0]) < 1e-6
        assert maxdiff(cell[0], reference[f"cell_{k}"][0]) < 1e-6


def test_box_renders_match_official(tiny_official, reference):
    phi = reference["z_dec"]
    # rgb_0 has query centres exactly on feature-cell borders: only half-to-even tie-breaking matches.
    assert maxdiff(tiny_official.render(phi, (48, 48)), reference["rgb_0"]) < TOL
    box = tuple(reference["box_1"].tolist())
    assert maxdiff(tiny_official.render(phi, (20, 30), box), reference["rgb_1"]) < TOL


def test_denoiser_ema_default_and_raw(official_path, tiny_official, reference):
    assert maxdiff(tiny_official.denoise(reference["zt"], reference["t"]), reference["eps_ema"]) < TOL
    raw = infd_solve.load_model(official_path, ema=False)
    assert maxdiff(raw.denoise(reference["zt"], reference["t"]), reference["eps_raw"]) < TOL
    # the two copies really differ, so the test above can tell them apart
    assert maxdiff(reference["eps_ema"], reference["eps_raw"]) > 0.1


def test_ddim10_sample_and_render(tiny_official, reference):
    m = tiny_official
    z0 = m.sample(2, steps=10, eta=0.0, noise=reference["zT"], progress=False)
    assert maxdiff(z0, reference["ddim10_eta0_z0"]) < TOL
    assert maxdiff(m.render(m.decode(z0), 32), reference["ddim10_eta0_rgb"]) < TOL


def test_patchwise_official_and_exact(tiny_official, reference):
    phi = tiny_official.decode(reference["z"])
    size, patch, pad = (int(reference[k]) for k in ("patchwise_size", "patchwise_patch", "patchwise_pad"))
    official = tiny_official.render_image(phi, size, tile=patch, pad=pad, mode="official")
    assert maxdiff(official, reference["patchwise_rgb"]) < TOL
    exact = tiny_official.render_image(phi, size, tile=patch, mode="exact")
    assert maxdiff(exact, reference["single_call_rgb"]) < TOL
    # the effect being handled is large on this fixture
    assert maxdiff(reference["patchwise_rgb"], reference["single_call_rgb"]) > 0.5


def test_part_parameter_counts(tiny_official):
    counts = {name: sum(p.numel() for p in getattr(tiny_official, name).parameters())
              for name in ("encoder", "quantizer", "decoder", "renderer", "unet")}
    assert counts == {"encoder": 195887, "quantizer": 192, "decoder": 306316, "renderer": 48579, "unet": 702499}
    assert sorted(k.split(".")[0] for k in tiny_official.skipped_keys if not k.startswith("z_dm.")) == \
        ["disc"] * 17 + ["perc_loss"] * 7


# ---------------------------------------------------------------------------------------------- FFHQ layout
def test_ffhq_keys_accepted_without_allocating():
    args, shapes = ffhq_layout()
    config = config_from_official({"name": "infd", "args": args})
    with torch.device("meta"):
        model = infd_solve.INFDModel(config)
        official = {k: torch.empty(s) for k, s in shapes.items()}
    ours, skipped, unexpected = convert_state_dict(official, config, ema=True)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert unexpected == []
    assert {k: tuple(v.shape) for k, v in ours.items()} == expected
    # only training losses and the raw denoiser copy are skipped, by name
    assert {re.match(r"[a-z_]+\.", k).group() for k in skipped} == {"perc_loss.", "disc.", "z_dm."}
    for part, prefix in (("encoder", "encoder."), ("quantizer", "quantizer."), ("decoder", "decoder."),
                         ("renderer", "renderer."), ("unet", "z_dm_ema.")):
        official_count = sum(torch.Size(s).numel() for k, s in shapes.items() if k.startswith(prefix))
        assert sum(p.numel() for p in getattr(model, part).parameters()) == official_count, part
    assert config.input_size == (256, 256)
    assert model.decoder.out_channels == 128 and config.renderer.hidden_channels == 256
