"""LPIPS from local files only (clear error otherwise), and the no-download substitute."""

import pytest
import torch
import torchvision

from infd_solve.constraints import PerceptualMatch
from infd_solve.losses import DetailEnergyLoss, PyramidLoss, load_lpips, perceptual_loss


@pytest.fixture
def no_backbone(tmp_path, monkeypatch):
    monkeypatch.setenv("INFD_LPIPS_BACKBONE", str(tmp_path / "missing.pth"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


def test_missing_backbone_names_the_file_and_how_to_supply_it(no_backbone):
    with pytest.raises(FileNotFoundError, match=r"alexnet-owt-7be5be79.pth not found.*INFD_LPIPS_BACKBONE"):
        load_lpips("alex")
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        PerceptualMatch(torch.zeros(3, 16, 16))
    loss, name = perceptual_loss("lpips")  # training falls back to the substitute, and says so
    assert isinstance(loss, PyramidLoss) and "substitute" in name


def test_lpips_loads_a_local_backbone_file(tmp_path, monkeypatch):
    torch.manual_seed(0)
    features = torchvision.models.alexnet().features  # random weights stand in for the ImageNet file
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    monkeypatch.setenv("INFD_LPIPS_BACKBONE", str(path))
    metric = load_lpips("alex")
    assert torch.equal(metric.net.slice1[0].weight, features[0].weight)
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert metric(a, a).abs().max() < 1e-6 and (metric(a, b) > 0).all()
    constraint = PerceptualMatch(a[0], metric=metric)
    assert constraint.loss(a[:1]).item() < 1e-6 < constraint.loss(b[:1]).item()
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    monkeypatch.setenv("INFD_LPIPS_BACKBONE", str(tmp_path / "bad.pth"))
    with pytest.raises(ValueError, match="bad.pth: not a PyTorch checkpoint"):
        load_lpips("alex")


def test_pyramid_loss_is_per_sample_and_zero_only_for_equal_images():
    a = torch.rand(3, 3, 24, 24) * 2 - 1
    b = a.clone()
    b[1] += 0.1 * torch.randn(3, 24, 24)
    loss = PyramidLoss()(a, b)
    assert loss.shape == (3,)
    assert loss[0] == 0 and loss[2] == 0 and loss[1] > 0


def test_detail_energy_prefers_texture_at_another_phase_to_blur():
    """Pixel L1 rewards averaging unpredictable texture away; DetailEnergyLoss rewards texture of the right
    strength wherever it sits."""
    g = torch.Generator().manual_seed(0)
    texture = torch.rand(2, 3, 24, 24, generator=g) * 2 - 1
    shifted = torch.roll(texture, shifts=(5, 7), dims=(2, 3))  # same texture, other phase
    blurred = torch.zeros_like(texture)  # the L1-optimal guess for unpredictable texture
    loss = DetailEnergyLoss()
    assert (shifted - texture).abs().mean() > (blurred - texture).abs().mean()  # L1 prefers blur
    assert (loss(shifted, texture) < 0.25 * loss(blurred, texture)).all()
    assert torch.equal(loss(texture, texture), torch.zeros(2))
