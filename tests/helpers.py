"""What tests build: tiny random models (real diffusers / open_clip classes), recipe loading.

Fixtures live in ``conftest.py``; test modules import builders from here, never from each other.
"""

import json
from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
TINY_CLIP_CONFIG = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 1},
                    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


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


def save_tiny_clip(directory: Path, seed: int = 0, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                   dtype: torch.dtype = torch.float32) -> Path:
    """A tiny random open_clip model (real open_clip classes) written to ``directory`` in the format
    ``infd_solve.load_clip`` reads and ``recipes/train_clip.py`` writes (``open_clip_config.json`` with its
    own preprocessing statistics + safetensors weights)."""
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": {
        "size": 32, "mean": list(mean), "std": list(std), "interpolation": "bicubic", "resize_mode": "squash"}}))
    state = {k: v.to(dtype).contiguous() for k, v in CLIP(**TINY_CLIP_CONFIG).eval().state_dict().items()}
    save_file(state, str(directory / "open_clip_model.safetensors"))
    return directory


def make_tiny_clip(directory: Path):
    """:func:`save_tiny_clip`, loaded through ``infd_solve.load_clip``."""
    from infd_solve.clip import load_clip

    return load_clip(save_tiny_clip(directory))


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


def ffhq_layout() -> tuple[dict, dict]:
    """The real FFHQ model's constructor args and ``{key: shape}`` (from ``fixtures/ffhq_keys.txt``)."""
    text = (FIXTURES / "ffhq_keys.txt").read_text()
    header = [line[3:] for line in text.splitlines() if line.startswith("#   ")]
    args = json.loads("\n".join(header))
    shapes = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, shape, _dtype = line.split("\t")
            shapes[key] = tuple(json.loads(shape))
    return args, shapes


def colour_mix_operator(size):
    """A user's operator, as one would write it (no adjoint, no coarser form): a camera whose sensor mixes the
    colour channels."""
    from infd_solve.operators import Operator

    class ColourMix(Operator):
        def __init__(self, size):
            super().__init__(size, size)
            self.register_buffer("mixing", torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.6, 0.2], [0.1, 0.3, 0.6]]))

        def forward(self, x):
            return torch.einsum("ij,bjhw->bihw", self.mixing.to(x), x)

    return ColourMix(size)
