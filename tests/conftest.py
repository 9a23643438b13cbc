from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]


def load_recipe(name: str):
    """A script of ``recipes/`` as a module (recipes are not installed; some import each other)."""
    import importlib.util
    import sys

    if str(REPO / "recipes") not in sys.path:
        sys.path.insert(0, str(REPO / "recipes"))
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    """Tiny models: one thread is as fast, and far steadier when other jobs share the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def reference():
    return torch.load(FIXTURES / "tiny_reference.pt", weights_only=True)


@pytest.fixture(scope="session")
def official_path():
    return FIXTURES / "tiny_official.pth"


@pytest.fixture(scope="session")
def tiny_official(official_path):
    import infd_solve

    return infd_solve.load_model(official_path)


def tiny_config(normalize: bool = True, with_unet: bool = True):
    """A small random INFD config (latent 3x8x8, field 32x32x32) for tests."""
    from infd_solve import INFDConfig
    from infd_solve.models.official import unet_config_from_official

    stack = {"ch": 32, "ch_mult": [1, 2, 1], "num_res_blocks": 1, "resolution": 32, "z_channels": 3}
    unet = unet_config_from_official({"image_size": 8, "model_channels": 32, "channel_mult": [1, 2],
                                      "num_res_blocks": 1, "attention_resolutions": [2], "num_head_channels": 16})
    return INFDConfig(
        z_shape=(3, 8, 8), encoder=stack, decoder=stack, n_embed=64,
        renderer={"feature_channels": 32, "hidden_channels": 32, "normalize": normalize},
        unet=unet if with_unet else None,
    )


def tiny_model(normalize: bool = True, seed: int = 0, with_unet: bool = True):
    from infd_solve import INFDModel

    torch.manual_seed(seed)
    model = INFDModel(tiny_config(normalize, with_unet)).eval()
    # GroupNorm affine parameters start at 1/0; perturb them so tests see non-trivial norms.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session")
def local_model():
    return tiny_model(normalize=False, seed=1)


@pytest.fixture(scope="session")
def normalized_model():
    return tiny_model(normalize=True, seed=2)


def make_tiny_clip(directory):
    """A tiny random open_clip model (real open_clip classes) saved in ``directory`` and loaded through
    infd_solve.load_clip."""
    import json

    from open_clip.model import CLIP
    from safetensors.torch import save_file

    from infd_solve.clip import load_clip

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 1},
           "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    torch.manual_seed(0)
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {
        "size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bicubic",
        "resize_mode": "squash"}}))
    save_file(CLIP(**cfg).state_dict(), str(directory / "open_clip_model.safetensors"))
    return load_clip(directory)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("solver_clip"))


def _cuda_param():
    available = torch.cuda.is_available()
    return pytest.param(("cuda", torch.float32), id="cuda-float32",
                        marks=[pytest.mark.cuda, pytest.mark.skipif(not available, reason="no CUDA device")])


@pytest.fixture(params=[pytest.param(("cpu", torch.float32), id="cpu-float32"),
                        pytest.param(("cpu", torch.float64), id="cpu-float64"), _cuda_param()])
def device_dtype(request):
    """Where and in which precision a test runs: CPU float32, CPU float64, and CUDA when the machine has it."""
    device, dtype = request.param
    return torch.device(device), dtype


@pytest.fixture(scope="session")
def gaussian_model():
    return make_gaussian_model()


def make_gaussian_model():
    """A small random local-renderer INFD model (no codebook) whose denoiser is the exact one of a N(0, I)
    latent prior: eps = sqrt(1 - alpha_bar) z_t. Samplers then see a prior with a known answer, instead of an
    untrained network's drift."""
    import types

    from infd_solve import INFDModel

    torch.manual_seed(3)
    config = tiny_config(normalize=False)
    config.n_embed = None
    model = INFDModel(config).eval()
    acp = model.alphas_cumprod

    def exact_denoise(self, z_t, t):
        t = torch.as_tensor(t).expand(z_t.shape[0])
        return (1 - acp[t]).sqrt().view(-1, 1, 1, 1).to(z_t) * z_t

    model.denoise = types.MethodType(exact_denoise, model)
    return model
