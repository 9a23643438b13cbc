"""One short run of each training recipe on tiny settings: it trains, resumes and writes a loadable model."""

import json
import os
import shutil
import subprocess

import pytest
import torch
from PIL import Image

import infd_solve
from infd_solve.data import scene_tensor
from infd_solve.training import encode_scenes

from .helpers import REPO, load_recipe, tiny_config

RECIPES = REPO / "recipes"

pytestmark = pytest.mark.slow


TINY_AE = ["--input-size", "16", "--latent", "8", "--ch", "32", "--hidden", "32", "--n-embed", "16", "--patch", "8",
           "--max-res", "64", "--batch-size", "2", "--threads", "1", "--workers", "0", "--save-every", "1"]


TINY_DM = ["--num-scenes", "8", "--steps", "2", "--batch-size", "4", "--model-channels", "32", "--channel-mult", "1",
           "2", "--attention", "2", "--head-channels", "16", "--threads", "1"]


def trained_autoencoder(tmp_path_factory, name: str, flags: list[str]):
    """A 2-step run of the autoencoder recipe (the GAN on from step 1) in a new folder."""
    out = tmp_path_factory.mktemp(name)
    load_recipe("train_autoencoder").main(["--out", str(out), "--steps", "2", "--gan-start", "1"] + flags)
    return out


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    return trained_autoencoder(tmp_path_factory, "ae", TINY_AE)


def test_autoencoder_recipe_writes_a_loadable_local_model(autoencoder):
    model = infd_solve.load_model(autoencoder / "infd")
    assert model.renderer.is_local and model.unet is None
    log = json.loads((autoencoder / "train_log.json").read_text())
    assert log["steps"] == 2 and log["perceptual"].startswith(("lpips", "pyramid"))
    assert Image.open(autoencoder / "losses.png").size[0] > 100
    with torch.no_grad():
        image = model.render(model.decode(model.encode(torch.zeros(1, 3, 16, 16))), 24)
    assert torch.isfinite(image).all()


def test_autoencoder_recipe_resumes(autoencoder):
    before = torch.load(autoencoder / "state.pt", weights_only=True)  # states hold no code
    load_recipe("train_autoencoder").main(["--out", str(autoencoder), "--steps", "3", "--resume"] + TINY_AE)
    after = torch.load(autoencoder / "state.pt", weights_only=True)
    assert before["step"] == 2 and after["step"] == 3 and len(after["history"]["l1"]) == 3


def test_autoencoder_recipe_on_a_folder_of_images(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, size in enumerate([(40, 30), (64, 64), (90, 50)]):
        Image.new("RGB", size, (40 * i, 100, 200)).save(folder / f"{i}.png")
    out = tmp_path / "run"
    load_recipe("train_autoencoder").main(["--out", str(out), "--images", str(folder), "--steps", "1"] + TINY_AE)
    assert (out / "infd" / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def diffusion(autoencoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("dm")
    load_recipe("train_diffusion").main(["--autoencoder", str(autoencoder / "infd"), "--out", str(out)] + TINY_DM)
    return out


def test_diffusion_recipe_trains_on_latents(diffusion):
    out = diffusion
    model = infd_solve.load_model(out / "infd")
    assert model.unet is not None and model.config.latent_scale > 0
    assert "prediction_type" not in model.config.scheduler  # epsilon, written as the shipped config is
    z = model.sample(1, steps=2, generator=[torch.Generator().manual_seed(0)], progress=False)
    assert z.shape == (1, 3, 8, 8) and torch.isfinite(z).all()
    assert json.loads((out / "train_log.json").read_text())["steps"] == 2


def test_diffusion_learns_encoded_mirror_images_not_flipped_latents(diffusion):
    """The flip augmentation: each scene's mirror image is encoded. Flipping a latent instead gives one the
    encoder never makes, since an encoder is not flip-equivariant (the tiny one here is not either)."""
    model = infd_solve.load_model(diffusion / "infd")
    latents = torch.load(diffusion / "latents.pt", weights_only=True)
    scenes = torch.cat([scene_tensor(s, 16) for s in range(8)])
    with torch.no_grad():
        mirrored = model.encode(scenes.flip(-1))
    assert latents.shape == (16, 3, 8, 8)
    torch.testing.assert_close(latents[8:], mirrored, atol=1e-5, rtol=1e-4)
    flipped_error = (latents[:8].flip(-1) - mirrored).pow(2).mean() / mirrored.var()
    assert flipped_error > 1e-3


def test_diffusion_with_normalized_channels_gives_the_denoiser_unit_channels(diffusion, tmp_path):
    """``--normalize-channels``: each channel's mean and scale in the config; the cached training latents, in the
    denoiser's space, have zero mean and unit variance per channel; samples come back in the decoder's units. A
    state of a one-scale run is refused on --resume."""
    out = tmp_path / "per_channel"
    flags = ["--autoencoder", str(diffusion / "infd"), "--out", str(out), "--normalize-channels"] + TINY_DM
    load_recipe("train_diffusion").main(flags)
    model = infd_solve.load_model(out / "infd")
    assert len(model.config.latent_scale) == len(model.config.latent_shift) == 3
    seen = model.scale(torch.load(out / "latents.pt", weights_only=True))
    torch.testing.assert_close(seen.mean((0, 2, 3)), torch.zeros(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(seen.std((0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)
    z = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(model.scale(model.unscale(z)), z)
    (out / "state.pt").unlink()
    shutil.copy(diffusion / "state.pt", out / "state.pt")
    with pytest.raises(ValueError, match="latent_shift"):
        load_recipe("train_diffusion").main(flags + ["--resume"])


def test_diffusion_input_scale_gives_the_denoiser_latents_of_that_spread(diffusion, tmp_path):
    """``--input-scale 0.5``: the denoiser's training latents have standard deviation 0.5 (half the default scale),
    a state of a run at the default scale is refused on --resume, and a scale that is not positive is an error."""
    out = tmp_path / "half"
    flags = ["--autoencoder", str(diffusion / "infd"), "--out", str(out), "--input-scale", "0.5"] + TINY_DM
    load_recipe("train_diffusion").main(flags)
    model, default = infd_solve.load_model(out / "infd"), infd_solve.load_model(diffusion / "infd")
    assert model.config.latent_scale == pytest.approx(default.config.latent_scale / 2, rel=1e-3)
    seen = model.scale(torch.load(out / "latents.pt", weights_only=True))
    assert float(seen.std()) == pytest.approx(0.5, rel=1e-3)
    (out / "state.pt").unlink()
    shutil.copy(diffusion / "state.pt", out / "state.pt")
    with pytest.raises(ValueError, match="input_scale"):
        load_recipe("train_diffusion").main(flags + ["--resume"])
    with pytest.raises(SystemExit):
        load_recipe("train_diffusion").parse_args(flags[:4] + ["--input-scale", "0"])


def test_diffusion_channel_gamma_gives_strong_channels_more_of_the_spread(diffusion, tmp_path):
    """``--channel-gamma 2``: each channel's spread in the denoiser's space goes as its standard deviation squared
    (one scale: as the standard deviation), the overall spread is ``--input-scale``; with --normalize-channels it
    is an error."""
    out = tmp_path / "gamma"
    flags = ["--autoencoder", str(diffusion / "infd"), "--out", str(out), "--channel-gamma", "2",
             "--input-scale", "1.5"] + TINY_DM
    load_recipe("train_diffusion").main(flags)
    model = infd_solve.load_model(out / "infd")
    latents = torch.load(out / "latents.pt", weights_only=True)
    std, seen = latents.std((0, 2, 3)), model.scale(latents).std((0, 2, 3))
    assert len(model.config.latent_scale) == 3 and model.config.latent_shift is None
    torch.testing.assert_close(seen / seen.max(), std.pow(2) / std.pow(2).max(), rtol=2e-3, atol=0)
    assert float(seen.pow(2).mean().sqrt()) == pytest.approx(1.5, rel=2e-3)
    with pytest.raises(SystemExit):
        load_recipe("train_diffusion").parse_args(flags[:4] + ["--channel-gamma", "2", "--normalize-channels"])


def test_per_channel_latent_units_are_checked_and_saved():
    from infd_solve import INFDConfig

    config = tiny_config(with_unet=False)
    config.latent_scale, config.latent_shift = [1.0, 2.0, 0.5], [0.1, -0.2, 0.0]
    again = INFDConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert (again.latent_scale, again.latent_shift) == ([1.0, 2.0, 0.5], [0.1, -0.2, 0.0])
    assert "latent_shift" not in tiny_config(with_unet=False).to_dict()  # one scale: configs stay as they were
    with pytest.raises(ValueError, match="one value per latent channel"):
        INFDConfig.from_dict(config.to_dict() | {"latent_scale": [1.0, 2.0]})
    with pytest.raises(ValueError, match="latent_scale"):
        INFDConfig.from_dict(config.to_dict() | {"latent_scale": [1.0, 0.0, 1.0]})


def test_diffusion_from_a_complete_model_trains_a_new_denoiser(diffusion, tmp_path):
    """Given a model that already has a denoiser, the recipe starts a new one, not a copy of the old."""
    out = tmp_path / "again"
    load_recipe("train_diffusion").main(["--autoencoder", str(diffusion / "infd"), "--out", str(out), "--seed", "1",
                                         "--steps", "1"] + TINY_DM[:2] + TINY_DM[4:])
    old = infd_solve.load_model(diffusion / "infd").unet.state_dict()
    new = infd_solve.load_model(out / "infd").unet.state_dict()
    weights = [k for k, v in new.items() if v.dim() == 4]
    assert min(float((new[k] - old[k]).abs().max()) for k in weights) > 1e-2


def test_decoder_fine_tune_keeps_latents_and_denoiser(diffusion, tmp_path):
    """--freeze-encoder: encoder and denoiser come through bitwise, so the denoiser stays valid; --n-embed 0
    drops the quantizer (the decoder learns unquantized latents); --detail-weight adds DetailEnergyLoss."""
    out = tmp_path / "ft"
    load_recipe("train_autoencoder").main(["--out", str(out), "--init", str(diffusion / "infd"), "--freeze-encoder",
                                      "--n-embed", "0", "--detail-weight", "1", "--steps", "2", "--gan-start", "0"]
                                     + TINY_AE[:TINY_AE.index("--n-embed")] + TINY_AE[TINY_AE.index("--patch"):])
    before, after = infd_solve.load_model(diffusion / "infd"), infd_solve.load_model(out / "infd")
    assert after.quantizer is None and after.config.latent_scale == before.config.latent_scale
    old = before.state_dict()
    for key, value in after.state_dict().items():
        if key.startswith(("encoder.", "unet.")):
            assert torch.equal(value, old[key]), key
    assert any(not torch.equal(v, old[k]) for k, v in after.state_dict().items() if k.startswith("renderer."))
    assert len(json.loads((out / "train_log.json").read_text())["final"]) >= 3


@pytest.mark.filterwarnings("error")
def test_padding_changes_with_no_training(diffusion, tmp_path):
    """Stage 7 of the shipped model: --steps 0 writes the init bitwise with the new padding."""
    out = tmp_path / "reflect"
    load_recipe("train_autoencoder").main(["--out", str(out), "--init", str(diffusion / "infd"), "--freeze-encoder",
                                           "--padding", "reflect", "--steps", "0"] + TINY_AE)
    before, after = infd_solve.load_model(diffusion / "infd"), infd_solve.load_model(out / "infd")
    assert before.config.renderer.padding == "zeros" and after.config.renderer.padding == "reflect"
    old = before.state_dict()
    assert after.state_dict().keys() == old.keys()
    assert all(torch.equal(v, old[k]) for k, v in after.state_dict().items())
    with torch.no_grad():
        field = after.decode(after.encode(torch.zeros(1, 3, 16, 16)))
        edge = (after.render(field, 24) - before.render(field, 24)).abs()
    assert edge[..., 8:-8, 8:-8].max() < 1e-5 and edge.max() > 1e-3  # only the canvas edge changes


TINY_PC = TINY_AE[:TINY_AE.index("--n-embed")] + TINY_AE[TINY_AE.index("--patch"):] + ["--patch-code", "12"]


@pytest.fixture(scope="module")
def patch_code(tmp_path_factory):
    return trained_autoencoder(tmp_path_factory, "pc", TINY_PC)


def code_buffers(model):
    return {k: v for k, v in model.state_dict().items() if k.split(".")[0] in ("encoder", "decoder")
            and k.endswith(("mean", "basis", "scale"))}


def test_patch_code_recipe_starts_at_its_code_whitened_on_its_training_inputs(patch_code, tmp_path):
    """--patch-code 12 on 16-px inputs and an 8 x 8 latent: every component of 2 x 2 patches. Before training
    the renderer adds nothing (conv_out zero), so a render at the input size is the image itself; training
    leaves the code alone; a resumed run keeps it; the code is white on the inputs it was fitted on (the first
    32 batches)."""
    from infd_solve.training import Batches, LandscapeSource

    recipe = load_recipe("train_autoencoder")
    recipe.main(["--out", str(tmp_path / "start"), "--steps", "0"] + TINY_PC)
    start, trained = infd_solve.load_model(tmp_path / "start" / "infd"), infd_solve.load_model(patch_code / "infd")
    assert start.config.encoder.kind == "patch_code" and start.config.renderer.rgb_skip and start.quantizer is None
    out = start.renderer.conv_out
    assert not out.weight.any() and not out.bias.any()
    assert 0 < trained.renderer.conv_out.weight.abs().max() < 3 * 4e-4  # two Adam steps of --lr from zero
    scenes = torch.cat([scene_tensor(s, 16) for s in range(100, 104)])
    with torch.no_grad():
        torch.testing.assert_close(start.render(start.decode(start.encode(scenes)), 16), scenes, atol=1e-4, rtol=0)
    code = code_buffers(start)
    assert len(code) == 6 and all(torch.equal(v, code[k]) for k, v in code_buffers(trained).items())
    batches = iter(Batches(LandscapeSource(16, 8, 64, seed=0), 2, [0, 0]))
    inputs = torch.cat([next(batches)[0] for _ in range(32)])
    with torch.no_grad():
        z = trained.encode(inputs)
    assert z.shape == (64, 12, 8, 8)
    torch.testing.assert_close(z.std(dim=(0, 2, 3)), torch.ones(12), atol=1e-3, rtol=0)
    resumed = tmp_path / "resumed"
    shutil.copytree(patch_code, resumed)
    recipe.main(["--out", str(resumed), "--steps", "3", "--resume"] + TINY_PC)
    assert all(torch.equal(v, code[k]) for k, v in code_buffers(infd_solve.load_model(resumed / "infd")).items())


def test_diffusion_recipe_on_a_patch_code(patch_code, tmp_path):
    """With v prediction, which a whitened code needs (see the model card)."""
    out = tmp_path / "dm"
    load_recipe("train_diffusion").main(["--autoencoder", str(patch_code / "infd"), "--out", str(out),
                                         "--prediction", "v_prediction"] + TINY_DM)
    ae, model = infd_solve.load_model(patch_code / "infd"), infd_solve.load_model(out / "infd")
    assert model.config.encoder.kind == "patch_code" and model.unet is not None
    assert model.config.scheduler["prediction_type"] == "v_prediction"
    latents = torch.load(out / "latents.pt", weights_only=True)
    with torch.no_grad():  # the diffusion data are the fitted code's latents
        torch.testing.assert_close(latents[:8], ae.encode(torch.cat([scene_tensor(s, 16) for s in range(8)])),
                                   atol=1e-5, rtol=1e-4)
    z = model.sample(1, steps=2, generator=[torch.Generator().manual_seed(0)], progress=False)
    assert z.shape == (1, 12, 8, 8) and torch.isfinite(z).all()
    with torch.no_grad():
        assert torch.isfinite(model.render(model.decode(z), 24)).all()


def test_an_init_that_is_a_patch_code_stays_one(patch_code, tmp_path):
    """No --patch-code needed: the init's code, renderer and sampling come through as they are (not refitted, not
    zeroed)."""
    out = tmp_path / "again"
    load_recipe("train_autoencoder").main(["--out", str(out), "--init", str(patch_code / "infd"), "--freeze-encoder",
                                           "--steps", "0"] + TINY_PC[:-2])
    before, after = infd_solve.load_model(patch_code / "infd"), infd_solve.load_model(out / "infd")
    assert after.config.to_dict() == before.config.to_dict()
    assert all(torch.equal(v, before.state_dict()[k]) for k, v in after.state_dict().items())


def test_denoiser_evaluation_reads_x0_errors_by_noise_level(diffusion, tmp_path):
    """recipes/eval_denoiser.py on the 2-step denoiser: one finite, positive ratio per timestep, written as
    JSON; near t = 0 the noisy latent itself is close to x0, so the ratio is far below 1 whatever the denoiser."""
    out = tmp_path / "denoiser.json"
    table = load_recipe("eval_denoiser").main(["--model", str(diffusion / "infd"), "--scenes", "2",
                                               "--timesteps", "0", "999", "--out", str(out)])
    ratios = table["x0 error / channel-mean error"]
    assert json.loads(out.read_text()) == table and set(ratios) == {"0", "999"}
    assert 0 < ratios["0"] < 0.1 and 0 < ratios["999"] and table["prediction"] == "epsilon"
    with pytest.raises(SystemExit, match="--timesteps must lie in"):
        load_recipe("eval_denoiser").main(["--model", str(diffusion / "infd"), "--timesteps", "1000"])


def test_time_limit_ends_early_with_a_model_and_resumes(autoencoder, tmp_path):
    """--time-limit: a run out of time still writes its state and a loadable model of the steps it made;
    --resume without the limit finishes the planned steps."""
    out = tmp_path / "dm"
    recipe = load_recipe("train_diffusion")
    recipe.main(["--autoencoder", str(autoencoder / "infd"), "--out", str(out), "--time-limit", "1e-9"] + TINY_DM)
    assert json.loads((out / "train_log.json").read_text())["steps"] == 0
    assert infd_solve.load_model(out / "infd").unet is not None
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 0
    recipe.main(["--autoencoder", str(autoencoder / "infd"), "--out", str(out), "--resume"] + TINY_DM)
    assert json.loads((out / "train_log.json").read_text())["steps"] == 2

    ae_out = tmp_path / "ae"
    load_recipe("train_autoencoder").main(["--out", str(ae_out), "--steps", "5", "--time-limit", "1e-9"] + TINY_AE)
    assert json.loads((ae_out / "train_log.json").read_text())["steps"] == 0
    assert (ae_out / "infd" / "model.safetensors").is_file()


def test_latents_rendered_by_worker_processes_are_the_same(diffusion):
    model = infd_solve.load_model(diffusion / "infd")
    torch.testing.assert_close(encode_scenes(model, 5, batch=2, workers=2), encode_scenes(model, 5, batch=2))


def test_training_on_a_missing_device_is_refused(autoencoder, tmp_path):
    missing = "cuda:99" if torch.cuda.is_available() else "cuda"
    with pytest.raises(ValueError, match=f"--device {missing!r}"):
        load_recipe("train_diffusion").main(["--autoencoder", str(autoencoder / "infd"), "--out", str(tmp_path),
                                             "--device", missing] + TINY_DM)
    with pytest.raises(ValueError, match=f"--device {missing!r}"):
        load_recipe("train_autoencoder").main(["--out", str(tmp_path), "--device", missing] + TINY_AE)


def test_patch_code_chain_script_writes_the_renderer_and_the_denoiser_in_one_model(tmp_path):
    """recipes/train_patch_code.sh, time-boxed to seconds on the CPU: the complete model is the trained
    renderer's autoencoder with the denoiser's EMA weights, and it samples."""
    env = {**os.environ, "DEVICE": "cpu", "SCENES": "8", "REFINE": "2"}
    subprocess.run(["bash", str(RECIPES / "train_patch_code.sh"), str(tmp_path), "0.02"], env=env, check=True,
                   capture_output=True, timeout=600)
    model = infd_solve.load_model(tmp_path / "model" / "infd")
    renderer = infd_solve.load_model(tmp_path / "renderer" / "infd")
    denoiser = infd_solve.load_model(tmp_path / "denoiser" / "infd")
    assert model.config.scheduler["prediction_type"] == "v_prediction" and model.config.z_shape == (32, 16, 16)
    assert model.config.renderer.coord_encoding == "none" and model.config.encoder.overlap == 4  # lapped
    assert model.config.encoder.refined and model.config.decoder.refined
    weights = model.state_dict()
    assert all(torch.equal(v, weights[k]) for k, v in renderer.state_dict().items())
    assert all(torch.equal(v, weights[k]) for k, v in denoiser.state_dict().items() if k.startswith("unet."))
    z = model.sample(1, steps=2, generator=[torch.Generator().manual_seed(0)], progress=False)
    assert torch.isfinite(model.render(model.decode(z), 32)).all()


def test_init_denoiser_starts_from_a_models_denoiser(diffusion, tmp_path):
    """--init-denoiser: the denoiser and its EMA start as the given model's (0 steps writes it back unchanged);
    one predicting something else is refused."""
    recipe = load_recipe("train_diffusion")
    flags = ["--autoencoder", str(diffusion / "infd"), "--init-denoiser", str(diffusion / "infd")] + TINY_DM
    recipe.main(flags + ["--out", str(tmp_path / "again"), "--steps", "0"])
    old = infd_solve.load_model(diffusion / "infd").unet.state_dict()
    new = infd_solve.load_model(tmp_path / "again" / "infd").unet.state_dict()
    assert all(torch.equal(v, old[k]) for k, v in new.items())
    with pytest.raises(SystemExit, match="predicts epsilon"):
        recipe.main(flags + ["--out", str(tmp_path / "v"), "--prediction", "v_prediction"])


@pytest.mark.parametrize("recipe", ["train_diffusion", "train_autoencoder"])
@pytest.mark.parametrize("minutes", ["0", "-5", "nan"])
def test_a_time_limit_that_is_not_positive_is_refused(recipe, minutes, capsys):
    with pytest.raises(SystemExit):
        required = ["--autoencoder", "x"] if recipe == "train_diffusion" else []
        load_recipe(recipe).parse_args(required + ["--time-limit", minutes])
    assert "--time-limit: must be a positive number of minutes" in capsys.readouterr().err
