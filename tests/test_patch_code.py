"""The patch-code autoencoder (infd_solve.models.patch_code): a fixed, whitened PCA code of pixel patches whose
linear decode the renderer draws through ``rgb_skip``; measured against the linear yardstick of
recipes/eval_latent_capacity.py, which computes the same code on its own."""

import json

import pytest
import torch

import infd_solve
from infd_solve import INFDConfig, INFDModel
from infd_solve.data import scene_tensor
from infd_solve.metrics import psnr, seam_ratio
from infd_solve.models.autoencoder import ConvStackConfig
from infd_solve.models.patch_code import (PatchCodeConfig, PatchDecoder, PatchEncoder, fit_patch_code,
                                         refine_patch_code, set_patch_code)
from infd_solve.models.renderer import RendererConfig

from .helpers import load_recipe, tiny_model

SIZE, PATCH = 16, 4  # 16-px input in 4 x 4 patches: a K x 4 x 4 latent, K at most 3 * 4 * 4 = 48


def patch_code_config(channels: int, patch: int = PATCH, size: int = SIZE) -> INFDConfig:
    code = {"kind": "patch_code", "patch": patch, "z_channels": channels, "ch": 32, "resolution": size}
    return INFDConfig(z_shape=(channels, size // patch, size // patch), encoder=code, decoder=code, n_embed=None,
                      renderer={"feature_channels": 35, "hidden_channels": 32, "normalize": False,
                                "feature_sampling": "bicubic", "coord_encoding": "none", "rgb_skip": True})


def fitted_model(train: torch.Tensor, channels: int, zero_out: bool = True, seed: int = 0) -> INFDModel:
    torch.manual_seed(seed)
    model = INFDModel(patch_code_config(channels)).eval()
    set_patch_code(model, fit_patch_code(train, PATCH, channels))
    if zero_out:  # as train_autoencoder starts: the renderer adds nothing to the code's image
        with torch.no_grad():
            model.renderer.conv_out.weight.zero_()
            model.renderer.conv_out.bias.zero_()
    return model


@pytest.fixture(scope="module")
def scenes():
    train = torch.cat([scene_tensor(i, SIZE) for i in range(12)])
    seeds = [500 + i for i in range(4)]
    test = torch.cat([scene_tensor(s, SIZE) for s in seeds])
    return train, test, torch.cat([scene_tensor(s, 256) for s in seeds])


@pytest.mark.parametrize("channels", [8, 48])
def test_untrained_model_renders_the_linear_code_of_the_yardstick(scenes, channels, one_thread):
    """At the input size the render is the code's reconstruction, at 256 its bicubic upsampling: the same PSNR
    as eval_latent_capacity's own PCA; with all 3 P^2 components the code loses nothing."""
    train, test, test_256 = scenes
    at_input, at_256 = load_recipe("eval_latent_capacity").linear_code_scores(train, test, test_256, PATCH,
                                                                              [channels])[channels]
    model = fitted_model(train, channels)
    with torch.no_grad():
        phi = model.decode(model.encode(test))
        ours = float(psnr(model.render(phi, SIZE).clamp(-1, 1), test).mean())
        ours_256 = float(psnr(model.render(phi, 256).clamp(-1, 1), test_256).mean())
    assert abs(ours_256 - at_256) < 0.01
    if channels == 3 * PATCH * PATCH:  # lossless (the yardstick's float64 code is exact: inf dB)
        assert ours > 80 and at_input > 80
    else:
        assert abs(ours - at_input) < 0.01 and ours < 60  # a real, lossy code


def test_codes_are_whitened(scenes, one_thread):
    train, _, _ = scenes
    model = fitted_model(train, 8)
    with torch.no_grad():
        z = model.encode(train)
    assert z.shape == (12, 8, SIZE // PATCH, SIZE // PATCH)
    torch.testing.assert_close(z.std(dim=(0, 2, 3)), torch.ones(8), atol=1e-3, rtol=0)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(8), atol=1e-3, rtol=0)


def test_whitening_divides_by_a_power_of_each_components_spread(scenes, one_thread):
    """whitening=0: an orthonormal projection (the code keeps the data's spectrum: its channel spreads are the
    whitened code's scales, and its squared norm is the centred patch's); 0.5: the square roots of those spreads.
    The linear decode is the same code either way."""
    train, test, _ = scenes
    whitened = fit_patch_code(train, PATCH, 8)
    model = fitted_model(train, 8)
    with torch.no_grad():
        reference = model.decoder.linear_decode(model.encode(test))
    for power in (0.0, 0.5):
        set_patch_code(model, fit_patch_code(train, PATCH, 8, whitening=power))
        with torch.no_grad():
            z = model.encode(train)
            same = model.decoder.linear_decode(model.encode(test))
        torch.testing.assert_close(z.std(dim=(0, 2, 3)), whitened["scale"] ** (1 - power), rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(same, reference, rtol=1e-4, atol=1e-5)
    centred = torch.nn.functional.unfold(train, PATCH, stride=PATCH).transpose(1, 2) - whitened["mean"]
    all_components = fit_patch_code(train, PATCH, 48, whitening=0.0)
    model = INFDModel(patch_code_config(48)).eval()
    set_patch_code(model, all_components)
    with torch.no_grad():
        energy = model.encode(train).pow(2).sum(1).flatten()
    torch.testing.assert_close(energy, centred.pow(2).sum(-1).flatten(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="whitening"):
        fit_patch_code(train, PATCH, 8, whitening=1.5)


def test_a_box_renders_as_the_crop_of_the_canvas_with_rgb_skip(scenes, one_thread):
    """rgb_skip on, a renderer that draws something (conv_out not zero): a box alone, and the canvas in tiles
    (rendering.py's own path to the renderer), equal the same pixels of one render of the whole canvas."""
    train, test, _ = scenes
    model = fitted_model(train, 8, zero_out=False)
    with torch.no_grad():
        phi = model.decode(model.encode(test[:2]))
        full = model.render(phi, 40)
        box = model.render(phi, (20, 10), box=(0.25, 0.5, 0.5, 1.0))  # rows 20:40, columns 10:20
        tiled = model.render_image(phi, 40, tile=16)
        drawn = (full - torch.nn.functional.interpolate(model.decoder.linear_decode(model.encode(test[:2])),
                                                          size=40, mode="bicubic", align_corners=False)).abs()
    assert drawn.mean() > 1e-3  # the net's part is not nothing
    torch.testing.assert_close(box, full[:, :, 20:40, 10:20], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tiled, full, atol=1e-5, rtol=1e-5)


def test_save_and_load_keep_the_kind_and_the_renders(scenes, tmp_path, one_thread):
    train, test, _ = scenes
    model = fitted_model(train, 8, zero_out=False)
    model.save(tmp_path / "pc")
    saved = json.loads((tmp_path / "pc" / "config.json").read_text())
    assert saved["encoder"]["kind"] == saved["decoder"]["kind"] == "patch_code"
    loaded = infd_solve.load_model(tmp_path / "pc")
    assert isinstance(loaded.config.encoder, PatchCodeConfig) and loaded.config.renderer.rgb_skip
    with torch.no_grad():
        before = model.render(model.decode(model.encode(test)), 24)
        after = loaded.render(loaded.decode(loaded.encode(test)), 24)
    assert torch.equal(before, after)


def test_conv_stack_configs_still_load_and_save_byte_identical(tmp_path):
    """No kind and no rgb_skip in them: re-saving the shipped model writes its config.json byte for byte (the
    model card's stage-7 command relies on it)."""
    shipped = infd_solve.pretrained.model_dir("default") / "config.json"
    assert "kind" not in json.loads(shipped.read_text())["encoder"]
    model = infd_solve.load_model("default")
    assert isinstance(model.config.encoder, ConvStackConfig) and not model.config.renderer.rgb_skip
    assert model.config.decoder.field_channels == model.config.renderer.feature_channels == 32
    assert (model.save(tmp_path / "again") / "config.json").read_bytes() == shipped.read_bytes()


@pytest.mark.parametrize("change, field", [
    ({"z_channels": 49}, "z_channels"),  # more components than a 4 x 4 patch has numbers
    ({"z_channels": 0}, "z_channels"),
    ({"patch": 0}, "patch"),
    ({"resolution": 18}, "resolution"),  # not a whole number of patches
    ({"ch": 48}, "ch"),
    ({"num_res_blocks": -1}, "num_res_blocks"),
    ({"kind": "pca"}, "kind"),
    ({"overlap": 3}, "overlap"),  # more than half of a 4-px patch
    ({"overlap": -1}, "overlap"),
    ({"overlap": 1, "z_channels": 109}, "z_channels"),  # a windowed 6 x 6 patch has 108 numbers
])
def test_bad_patch_code_options_name_the_field(change, field):
    with pytest.raises(ValueError, match=rf"^{field} "):
        PatchCodeConfig(**({"patch": 4, "z_channels": 8, "resolution": 16} | change))


def test_inconsistent_configs_are_refused():
    good = patch_code_config(8).to_dict()
    cases = [
        ({**good, "encoder": {**good["encoder"], "kind": "vq"}}, "encoder.kind"),
        ({**good, "decoder": {"ch": 32, "ch_mult": [1, 2, 2], "z_channels": 8}}, "one kind"),
        ({**good, "decoder": {**good["decoder"], "patch": 2}}, "patch"),
        ({**good, "renderer": {**good["renderer"], "feature_channels": 32}}, "feature_channels"),
    ]
    for config, message in cases:
        with pytest.raises(ValueError, match=message):
            INFDConfig.from_dict(config)
    with pytest.raises(ValueError, match="rgb_skip"):
        RendererConfig(rgb_skip="yes")
    with pytest.raises(ValueError, match="rgb_skip needs feature_channels"):
        RendererConfig(feature_channels=2, rgb_skip=True, normalize=False)


@pytest.mark.parametrize("overlap", [1, 2])
def test_a_lapped_code_with_all_components_is_exact(overlap, one_thread):
    """The decoder's windowed overlap-add over the squared windows inverts the encoder, in the outer cells too
    (their overlap is mirrored, and fewer windows reach the outermost pixels)."""
    side = PATCH + 2 * overlap
    train = torch.cat([scene_tensor(i, SIZE) for i in range(16)])
    test = torch.cat([scene_tensor(s, SIZE) for s in (500, 501)])
    config = PatchCodeConfig(patch=PATCH, z_channels=3 * side**2, resolution=SIZE, overlap=overlap)
    encoder, decoder = PatchEncoder(config), PatchDecoder(config)
    code = fit_patch_code(train, PATCH, 3 * side**2, whitening=0.0, overlap=overlap)
    encoder.set_code(code)
    decoder.set_code(code)
    torch.testing.assert_close(decoder.linear_decode(encoder(test)), test, atol=1e-4, rtol=0)


def test_a_latent_error_fades_across_cell_borders_in_a_lapped_code(one_thread):
    """Noise on every cell's latent (as a sampler leaves it): the block code draws it as a patchwork of blocks,
    lines at every cell border; the lapped code (overlap P/2) keeps the borders near the truth's own level."""
    patch, size = 8, 32
    train = torch.cat([scene_tensor(i, size) for i in range(12)])
    test = torch.cat([scene_tensor(s, size) for s in range(500, 508)])
    ratios = {}
    for overlap in (0, patch // 2):
        config = PatchCodeConfig(patch=patch, z_channels=16, resolution=size, overlap=overlap)
        encoder, decoder = PatchEncoder(config), PatchDecoder(config)
        code = fit_patch_code(train, patch, 16, overlap=overlap)
        encoder.set_code(code)
        decoder.set_code(code)
        z = encoder(test)
        noisy = decoder.linear_decode(z + 0.3 * torch.randn(z.shape, generator=torch.Generator().manual_seed(0)))
        ratios[overlap] = seam_ratio(noisy[..., patch:-patch, patch:-patch], patch)
    truth = seam_ratio(test[..., patch:-patch, patch:-patch], patch)
    assert ratios[0][0] > 3 * truth[0] and ratios[0][1] > 1.5 * truth[1]
    assert ratios[4][0] < 1.3 * truth[0] and ratios[4][1] < 1.1 * truth[1]


def linear_code(code: dict, patch: int, size: int, overlap: int) -> tuple[PatchEncoder, PatchDecoder]:
    config = PatchCodeConfig(patch=patch, z_channels=len(code["scale"]), resolution=size, overlap=overlap,
                             refined="synthesis" in code)
    encoder, decoder = PatchEncoder(config), PatchDecoder(config)
    encoder.set_code(code)
    decoder.set_code(code)
    return encoder, decoder


def test_a_refined_code_reconstructs_better_and_draws_latent_noise_flatter(one_thread):
    """Refining a lapped PCA code (analysis and synthesis trained apart) lowers the held-out error, and decoded
    latent noise (as a sampler leaves it) stands out less at the cell borders than the PCA's."""
    patch, size, overlap = 8, 32, 4
    train = torch.cat([scene_tensor(i, size) for i in range(64)])
    test = torch.cat([scene_tensor(s, size) for s in range(500, 516)])
    fitted = fit_patch_code(train, patch, 16, whitening=0.5, overlap=overlap)
    refined = refine_patch_code(fitted, train, patch, overlap, steps=300, lr=1e-3, progress=False)
    scores = {}
    for name, code in (("fitted", fitted), ("refined", refined)):
        encoder, decoder = linear_code(code, patch, size, overlap)
        with torch.no_grad():
            rec = decoder.linear_decode(encoder(test))
            noise = decoder.linear_decode(torch.randn(16, 16, 4, 4, generator=torch.Generator().manual_seed(0)))
        scores[name] = (float(psnr(rec, test).mean()), max(seam_ratio(noise, patch)))
    assert scores["refined"][0] > scores["fitted"][0] + 0.5
    assert scores["refined"][1] < scores["fitted"][1] - 0.1
    assert torch.equal(refined["mean"], fitted["mean"]) and torch.equal(refined["scale"], fitted["scale"])


def test_a_refined_code_is_saved_with_its_synthesis(tmp_path, one_thread):
    """A refined code round-trips through save and load_model; codes and configs that do not match are refused."""
    train = torch.cat([scene_tensor(i, SIZE) for i in range(12)])
    code = refine_patch_code(fit_patch_code(train, PATCH, 8), train, PATCH, steps=3, progress=False)
    config = patch_code_config(8)
    config.encoder.refined = config.decoder.refined = True
    model = INFDModel(config).eval()
    set_patch_code(model, code)
    loaded = infd_solve.load_model(model.save(tmp_path / "refined"))
    assert loaded.config.decoder.refined and torch.equal(loaded.decoder.synthesis, code["synthesis"])
    with torch.no_grad():
        assert torch.equal(loaded.decode(loaded.encode(train[:2])), model.decode(model.encode(train[:2])))
    with pytest.raises(ValueError, match="refined=True"):
        set_patch_code(INFDModel(patch_code_config(8)), code)
    with pytest.raises(ValueError, match="refined=True"):
        set_patch_code(model, fit_patch_code(train, PATCH, 8))
    with pytest.raises(ValueError, match="refined must be true or false"):
        PatchCodeConfig(refined="yes")


def test_bad_fits_and_codes_are_refused():
    images = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="channels"):
        fit_patch_code(images, 4, 49)
    with pytest.raises(ValueError, match="not divisible by patch"):
        fit_patch_code(images, 3, 4)
    with pytest.raises(ValueError, match="4 patches cannot fit 8 components"):
        fit_patch_code(images, 4, 8)
    model = INFDModel(patch_code_config(8))
    with pytest.raises(ValueError, match="code basis has shape"):
        set_patch_code(model, fit_patch_code(torch.rand(2, 3, 16, 16), PATCH, 4))
    with pytest.raises(ValueError, match="patch code"):
        set_patch_code(tiny_model(with_unet=False), fit_patch_code(torch.rand(2, 3, 16, 16), PATCH, 4))


def test_the_recipe_refuses_what_a_patch_code_cannot_be(tmp_path):
    """Refused before any data is made: a quantizer, an init of another kind or size, a latent that is no patch
    grid."""
    conv = tiny_model(with_unet=False).save(tmp_path / "conv")
    code = INFDModel(patch_code_config(8)).save(tmp_path / "code")  # 16-px input, latent 8 x 4 x 4
    base = ["--out", str(tmp_path / "run"), "--threads", "1", "--workers", "0", "--input-size", "16", "--latent", "8",
            "--steps", "0", "--batch-size", "1", "--max-res", "32", "--patch", "8"]  # quick if one is not refused
    cases = [(["--patch-code", "12", "--n-embed", "16"], "--n-embed 16: a patch code has no quantizer"),
             (["--patch-code", "12", "--init", str(conv)], "not a patch code"),
             (["--patch-code", "12", "--latent", "6"], "not a multiple of --latent 6"),
             (["--patch-code", "0"], "positive number of components"),
             (["--patch-code", "12", "--init", str(code), "--latent", "4"], "is a patch code of 8 components"),
             (["--init", str(code), "--input-size", "32"], "pass --input-size 16 --latent 4"),
             (["--init", str(code), "--latent", "4", "--n-embed", "16"], "has no quantizer"),
             (["--whitening", "0.5"], "shapes a new patch code"),
             (["--init", str(code), "--latent", "4", "--whitening", "0.5"], "shapes a new patch code"),
             (["--patch-code", "12", "--whitening", "2"], "between 0 and 1"),
             (["--overlap", "1"], "shapes a new patch code"),
             (["--patch-code", "12", "--overlap", "2"], "between 0 and half the patch size \\(1\\)"),
             (["--refine-code", "10"], "trains a new patch code"),
             (["--init", str(code), "--latent", "4", "--refine-code", "10"], "trains a new patch code"),
             (["--patch-code", "12", "--refine-code", "0"], "positive number of steps")]
    for flags, message in cases:
        with pytest.raises(SystemExit, match=message):
            load_recipe("train_autoencoder").main(base + flags)
