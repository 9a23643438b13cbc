"""The renderer's coord_encoding option: continuous position inputs across cell borders, local exact crops,
config round-trip, and fine-tuning a model into it."""

import json

import pytest
import torch

import infd_solve
from infd_solve import INFDConfig, INFDModel
from infd_solve.models.renderer import CLIFRenderer, RendererConfig
from infd_solve.rendering import pixel_grid

from .helpers import load_recipe, tiny_config


def periodic_model(seed=0):
    torch.manual_seed(seed)
    config = tiny_config(normalize=False, with_unet=False)
    config.renderer = RendererConfig(**(config.renderer.to_dict() | {"feature_sampling": "bilinear",
                                                                    "coord_encoding": "periodic"}))
    return INFDModel(config).eval()


def test_coord_encoding_defaults_to_official_and_round_trips(tmp_path):
    assert RendererConfig().coord_encoding == "relative"
    old = tiny_config(normalize=False, with_unet=False).to_dict()
    del old["renderer"]["coord_encoding"]  # a config.json written before the option existed
    assert INFDConfig.from_dict(old).renderer.coord_encoding == "relative"
    model = periodic_model()
    model.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["renderer"]["coord_encoding"] == "periodic"
    loaded = infd_solve.load_model(tmp_path / "m")
    assert loaded.config.renderer.coord_encoding == "periodic"
    with pytest.raises(ValueError, match="coord_encoding"):
        RendererConfig(coord_encoding="fourier")


@pytest.mark.parametrize("encoding, channels", [("relative", 36), ("periodic", 38), ("none", 34)])
def test_position_inputs_are_continuous_across_cells_unless_relative(encoding, channels):
    renderer = CLIFRenderer(RendererConfig(feature_channels=32, hidden_channels=32, normalize=False,
                                           feature_sampling="bilinear", coord_encoding=encoding))
    assert renderer.conv_in.in_channels == renderer.in_channels == channels
    phi = torch.randn(1, 32, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        query = renderer.query(phi, *pixel_grid((0, 0, 1, 1), (128, 128)))  # 16 query pixels per cell
    assert query.shape[1] == channels
    position = query[:, 32:-2]
    jump = (position[..., 1:] - position[..., :-1]).abs().max().item() if position.shape[1] else 0.0
    if encoding == "relative":
        assert jump > 1.5  # from +1 to -1 (half a cell each side, in the official units) at every border
    else:
        assert jump < 0.45  # one period over 16 pixels: sin and cos change by at most 2 pi / 16 per pixel


def test_periodic_renderer_box_is_exact_crop():
    model = periodic_model(seed=1)
    assert model.renderer.is_local
    with torch.no_grad():
        phi = model.decode(torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)))
        full = model.render(phi, 96)
        for box in [(0.25, 0.125, 0.75, 0.5), (0.0, 0.0, 0.5, 0.25), (0.5, 0.75, 1.0, 1.0)]:
            h, w = round((box[3] - box[1]) * 96), round((box[2] - box[0]) * 96)
            t, l = round(box[1] * 96), round(box[0] * 96)
            alone = model.render(phi, (h, w), box)
            assert (alone - full[..., t : t + h, l : l + w]).abs().max().item() < 1e-5, box


# --------------------------------------------------------------------------------------- fine-tuning
def test_adapt_renderer_input_keeps_features_and_cell():
    from infd_solve.training import adapt_renderer_input as adapt

    weight = torch.randn(8, 32 + 2 + 2, 3, 3)
    periodic = adapt(weight, 32, "relative", "periodic")
    assert periodic.shape == (8, 38, 3, 3)
    assert torch.equal(periodic[:, :32], weight[:, :32]) and torch.equal(periodic[:, -2:], weight[:, -2:])
    assert torch.allclose(periodic[:, 32:34] * torch.pi, weight[:, 32:34]) and not periodic[:, 34:36].any()
    none = adapt(weight, 32, "relative", "none")
    assert torch.equal(none, torch.cat([weight[:, :32], weight[:, -2:]], 1))
    assert adapt(weight, 32, "relative", "relative") is weight
    with pytest.raises(ValueError, match="does not match"):
        adapt(weight, 32, "periodic", "relative")


@pytest.mark.slow
def test_fine_tune_into_periodic_keeps_encoder_and_denoiser(tmp_path):
    tiny = ["--input-size", "16", "--latent", "8", "--ch", "32", "--hidden", "32", "--patch", "8", "--max-res", "64",
            "--batch-size", "2", "--threads", "1", "--workers", "0", "--gan-weight", "0", "--feature-sampling",
            "bilinear"]
    recipe = load_recipe("train_autoencoder")
    recipe.main(["--out", str(tmp_path / "ae"), "--steps", "1", "--n-embed", "16"] + tiny)
    recipe.main(["--out", str(tmp_path / "ft"), "--init", str(tmp_path / "ae" / "infd"), "--freeze-encoder",
                 "--n-embed", "0", "--coord-encoding", "periodic", "--steps", "1"] + tiny)
    before, after = (infd_solve.load_model(tmp_path / d / "infd") for d in ("ae", "ft"))
    assert after.config.renderer.coord_encoding == "periodic" and after.renderer.conv_in.in_channels == 38
    old = before.state_dict()
    for key, value in after.state_dict().items():
        if key.startswith("encoder."):
            assert torch.equal(value, old[key]), key
    # without the flag a fine-tune keeps the init's encoding
    recipe.main(["--out", str(tmp_path / "ft2"), "--init", str(tmp_path / "ft" / "infd"), "--freeze-encoder",
                 "--n-embed", "0", "--steps", "1"] + tiny)
    assert infd_solve.load_model(tmp_path / "ft2" / "infd").config.renderer.coord_encoding == "periodic"
