"""Image losses shared by training recipes and guidance: LPIPS from local files, and a no-download substitute.

LPIPS needs two sets of weights: its small linear heads ship inside the ``lpips`` package, but its backbone
(torchvision's ImageNet VGG16 or AlexNet) is normally downloaded. We never download: the backbone file must
already be on disk, at ``$INFD_LPIPS_BACKBONE`` or in torch's hub cache under its torchvision file name.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import CheckpointError, MissingCheckpointError, load_torch_file

# torchvision's file names for the ImageNet backbones lpips uses.
LPIPS_BACKBONE_FILES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}


def lpips_backbone_path(net: str = "vgg") -> Path:
    """Where the backbone weights for ``lpips`` must be; raises
    :class:`~infd_solve.checkpoints.MissingCheckpointError` (a ``FileNotFoundError``) if they are not there."""
    if net not in LPIPS_BACKBONE_FILES:
        raise ValueError(f"net must be one of {sorted(LPIPS_BACKBONE_FILES)}, got {net!r}")
    name = LPIPS_BACKBONE_FILES[net]
    candidates = [Path(os.environ["INFD_LPIPS_BACKBONE"])] if os.environ.get("INFD_LPIPS_BACKBONE") else []
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / name)
    for path in candidates:
        if path.is_file():
            return path
    raise MissingCheckpointError(
        f"LPIPS backbone weights {name} not found (looked at: {', '.join(map(str, candidates))}). "
        f"Copy torchvision's ImageNet {net} weights file there or set INFD_LPIPS_BACKBONE to its path; "
        "infd-solve never downloads weights."
    )


def load_lpips(net: str = "vgg", device=None) -> nn.Module:
    """``lpips.LPIPS`` with its backbone loaded from a local file (see :func:`lpips_backbone_path`), on
    ``device`` (a constraint holding it moves it with itself, see :meth:`infd_solve.Constraint.to`)."""
    import lpips
    import torchvision

    path = lpips_backbone_path(net)
    state = load_torch_file(path, f"LPIPS {net} backbone")  # a bad file is refused before building the net
    features = (torchvision.models.vgg16() if net == "vgg" else torchvision.models.alexnet()).features
    try:
        # lpips uses the convolutional features only; the classifier weights may be absent
        features.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
    except Exception as e:  # noqa: BLE001 - any failure here means the file is not that backbone
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is not torchvision's ImageNet {net} weights file ({first})") from None
    with warnings.catch_warnings():  # lpips builds its backbone with torchvision's deprecated pretrained= flag
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        metric = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)  # random backbone: nothing is fetched
    for name in ("slice1", "slice2", "slice3", "slice4", "slice5"):
        for index, layer in getattr(metric.net, name)._modules.items():
            layer.load_state_dict(features[int(index)].state_dict())
    return metric.eval().requires_grad_(False).to(device)


class PyramidLoss(nn.Module):
    """No-download perceptual substitute: L1 over Laplacian-pyramid bands plus image gradients.

    Pixel L1 alone under-weights edges and texture; band-wise L1 gives every frequency band a say.
    Inputs in [-1, 1]; returns one loss per sample.
    """

    def __init__(self, levels: int = 3):
        super().__init__()
        self.levels = levels

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d = a - b
        total = 0
        for _ in range(self.levels):
            low = F.avg_pool2d(d, 2, ceil_mode=True) if min(d.shape[-2:]) >= 2 else d
            band = d - F.interpolate(low, size=d.shape[-2:], mode="nearest")
            gy, gx = d[..., 1:, :] - d[..., :-1, :], d[..., :, 1:] - d[..., :, :-1]
            total = total + band.abs().mean((1, 2, 3)) + gy.abs().mean((1, 2, 3)) + gx.abs().mean((1, 2, 3))
            d = low
        return total / self.levels


class DetailEnergyLoss(nn.Module):
    """How much detail each region has, not where it is: L1 between local energies (mean absolute
    Laplacian band over ``window`` x ``window`` pixels) of the two images, band by band.

    Pixel and band L1 average texture that the latent cannot pin down into blur; this term is minimised by
    texture of the right strength at any phase, so a renderer trained with it keeps detail at high
    resolution. Inputs in [-1, 1]; one loss per sample.
    """

    def __init__(self, levels: int = 2, window: int = 8):
        super().__init__()
        self.levels, self.window = levels, window

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = 0
        for _ in range(self.levels):
            energies = []
            for x in (a, b):
                low = F.avg_pool2d(x, 2, ceil_mode=True)
                band = x - F.interpolate(low, size=x.shape[-2:], mode="nearest")
                energies.append(F.avg_pool2d(band.abs(), min(self.window, *x.shape[-2:]), ceil_mode=True))
            total = total + (energies[0] - energies[1]).abs().mean((1, 2, 3))
            a, b = F.avg_pool2d(a, 2, ceil_mode=True), F.avg_pool2d(b, 2, ceil_mode=True)
        return total / self.levels


def perceptual_loss(prefer: str = "lpips", net: str = "vgg") -> tuple[nn.Module, str]:
    """``(loss_module, name)``: LPIPS if its backbone is on disk and preferred, else :class:`PyramidLoss`.

    Both map two ``B x 3 x H x W`` batches in [-1, 1] to per-sample losses (LPIPS output is flattened).
    """
    if prefer == "lpips":
        try:
            metric = load_lpips(net)
        except FileNotFoundError:
            pass
        else:
            return _Flatten(metric), f"lpips-{net}"
    return PyramidLoss(), "pyramid-l1 (no-download substitute for LPIPS)"


class _Flatten(nn.Module):
    def __init__(self, metric: nn.Module):
        super().__init__()
        self.metric = metric

    def forward(self, a, b):
        return self.metric(a, b).flatten()
