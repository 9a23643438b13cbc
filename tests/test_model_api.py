"""INFDModel API on small random models: save/load, sampling reproducibility, encoding."""

import json

import pytest
import torch

import infd_solve
from infd_solve.samplers.ddim import ddim_timesteps

from .helpers import tiny_model


def test_save_load_roundtrip(tmp_path, normalized_model):
    target = tmp_path / "model"
    normalized_model.save(target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((target / "config.json").read_text())["format"] == "infd-solve"
    loaded = infd_solve.load_model(target)
    z = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.render(loaded.decode(z), 12), normalized_model.render(normalized_model.decode(z), 12))
        assert torch.equal(loaded.denoise(z, 500), normalized_model.denoise(z, 500))
    # saving again over an existing directory replaces it and leaves no temporary files behind
    tiny_model(seed=5).save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert not torch.equal(infd_solve.load_model(target).renderer.conv_in.weight, loaded.renderer.conv_in.weight)


def test_sample_reproducible_and_per_sample_generators(local_model):
    def run(seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return local_model.sample(len(seeds), steps=5, eta=1.0, generator=gens, progress=False)

    both = run([3, 4])
    assert torch.equal(both, run([3, 4]))
    # a sample does not depend on its batch (random untrained denoiser: large values, relative tolerance)
    torch.testing.assert_close(run([4])[0], both[1], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(both[0], both[1])
    assert torch.isfinite(both).all()


def test_sample_callback_sees_every_step(local_model):
    seen = []
    local_model.sample(1, steps=4, eta=0.0, generator=torch.Generator().manual_seed(0),
                       callback=lambda s: seen.append((s["i"], s["t"], tuple(s["x0"].shape))), progress=False)
    assert seen == [(i, t, (1, 3, 8, 8)) for i, t in enumerate(ddim_timesteps(4))]


def test_ddim_timesteps_official_respacing():
    assert ddim_timesteps(10) == list(range(900, -1, -100))
    assert ddim_timesteps(25)[:2] == [960, 920] and ddim_timesteps(200)[0] == 995
    assert len(ddim_timesteps(30)) == 30 and ddim_timesteps(30)[0] == 29 * 34  # smallest stride giving 30 steps
    with pytest.raises(ValueError, match="steps=600 cannot be spaced"):
        ddim_timesteps(600)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        ddim_timesteps(0)


def test_sample_noise_shape_checked(local_model):
    with pytest.raises(ValueError, match=r"noise must have shape \(2, 3, 8, 8\)"):
        local_model.sample(2, steps=2, noise=torch.randn(1, 3, 8, 8), progress=False)


def test_encode_resizes_to_input_size(local_model):
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        z = local_model.encode(x)
        resized = torch.nn.functional.interpolate(x, size=32, mode="bicubic", antialias=True)
        direct = local_model.encode(resized.clamp(-1, 1))
    assert z.shape == (1, 3, 8, 8)
    assert torch.allclose(z, direct, atol=1e-6)


def test_quantizer_straight_through_gradient(local_model):
    z = torch.randn(1, 3, 8, 8, requires_grad=True)
    z_q, _, _ = local_model.quantizer(z)
    z_q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


def test_autoencoder_only_model_has_no_sampler(tmp_path):
    model = tiny_model(with_unet=False)
    with pytest.raises(RuntimeError, match="no diffusion denoiser"):
        model.sample(1, steps=2)
    model.save(tmp_path / "ae")
    assert infd_solve.load_model(tmp_path / "ae").unet is None


def test_a_loaded_model_renders_without_a_graph_unless_its_input_asks():
    model = infd_solve.load_model("default")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    z = torch.randn(1, *model.config.z_shape, generator=torch.Generator().manual_seed(0))
    plain = model.render(model.decode(z), 16)
    assert plain.grad_fn is None and not plain.requires_grad
    z.requires_grad_(True)
    guided = model.render(model.decode(z), 16)
    (grad,) = torch.autograd.grad(guided.sum(), z)  # what a solve needs still works
    assert grad.abs().sum() > 0


def test_v_prediction_denoiser_gives_the_noise_diffusers_infers():
    """A v-predicting denoiser: ``denoise`` returns eps, and the x0 it implies is the one diffusers' own
    scheduler infers from the raw v output (an independent implementation of the conversion)."""
    from diffusers import DDPMScheduler

    from infd_solve import INFDConfig, INFDModel

    from .helpers import tiny_config

    config = tiny_config()
    config.scheduler = {**config.scheduler, "prediction_type": "v_prediction"}
    torch.manual_seed(0)
    model = INFDModel(INFDConfig.from_dict(config.to_dict())).eval()
    reference = DDPMScheduler(**config.scheduler, clip_sample=False)
    z_t = torch.randn(1, 3, 8, 8)
    for t in (20, 500, 990):
        with torch.no_grad():
            eps, v = model.denoise(z_t, t), model.unet(z_t, torch.tensor([t])).sample
        a = model.alphas_cumprod[t]
        x0 = (z_t - (1 - a).sqrt() * eps) / a.sqrt()
        expected = reference.step(v, t, z_t).pred_original_sample
        assert torch.allclose(x0, expected, atol=1e-4 / a.sqrt()), t
        assert not torch.allclose(eps, v, atol=1e-2)  # the conversion did something


def test_unknown_prediction_type_is_refused():
    from infd_solve import INFDConfig

    from .helpers import tiny_config

    d = tiny_config().to_dict()
    d["scheduler"]["prediction_type"] = "sample"
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        INFDConfig.from_dict(d)
