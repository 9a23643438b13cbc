from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]


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
