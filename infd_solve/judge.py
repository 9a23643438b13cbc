"""An independent judge of layouts: a small segmentation network for the procedural landscapes' labels.

Guidance is scored by the CLIP that guides it, and guidance can fool its own CLIP. The judge is trained on the
landscapes' own per-pixel ground truth (``infd_solve.data.landscapes.LABELS``) and never used for guidance, so
it says what a box actually holds. ``load_judge("default")`` loads the one shipped in ``infd_solve.pretrained``
(trained by ``recipes/train_judge.py``; accuracy in ``pretrained/MODEL_CARD.md``), offline.

Images are ``B x 3 x H x W`` tensors in [-1, 1] (the diffusion convention), any size (padded internally to a
multiple of the network's stride).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["JudgeConfig", "JudgeNet", "Judge", "load_judge", "CONFIG_FILE", "WEIGHTS_FILE"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_NAME = "infd-solve-judge"


@dataclass
class JudgeConfig:
    """``labels``: class names (output channels, in order); ``channels``: widths of the encoder levels, the
    first at half resolution, each next one halving again; ``stem``: width of the full-resolution branch."""

    labels: tuple[str, ...] = ()
    channels: tuple[int, ...] = (32, 64, 96, 128, 128)
    stem: int = 16

    def __post_init__(self):
        self.labels, self.channels = tuple(self.labels), tuple(int(c) for c in self.channels)
        if not self.labels or not self.channels:
            raise ValueError("a judge needs labels and at least one level")

    @property
    def stride(self) -> int:
        return 2 ** len(self.channels)

    def to_dict(self) -> dict:
        return {"format": FORMAT_NAME, "labels": list(self.labels), "channels": list(self.channels),
                "stem": self.stem}


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(min(8, cout // 4), cout), nn.SiLU())


class JudgeNet(nn.Module):
    """A small U-Net: encoder levels at 1/2, 1/4, ... of the input, a decoder back to 1/2 with skips, and a
    full-resolution colour branch joined at the end (labels follow sharp edges without full-resolution depth)."""

    def __init__(self, config: JudgeConfig):
        super().__init__()
        self.config = config
        ch = config.channels
        self.down = nn.ModuleList()
        cin = 3
        for c in ch:
            self.down.append(nn.Sequential(_conv(cin, c, 2), _conv(c, c)))
            cin = c
        self.up = nn.ModuleList(_conv(ch[k + 1] + ch[k], ch[k]) for k in reversed(range(len(ch) - 1)))
        self.stem = _conv(3, config.stem)
        self.head = nn.Sequential(_conv(ch[0] + config.stem, ch[0]), nn.Conv2d(ch[0], len(config.labels), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``B x labels x H x W`` of images ``B x 3 x H x W`` in [-1, 1]."""
        h, w = x.shape[-2:]
        s = self.config.stride
        ph, pw = -h % s, -w % s
        if ph or pw:  # replicate keeps edge colours (a black border would look like night sky)
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        skips = []
        y = x
        for block in self.down:
            y = block(y)
            skips.append(y)
        for k, block in zip(reversed(range(len(skips) - 1)), self.up):
            y = F.interpolate(y, size=skips[k].shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skips[k]], 1))
        y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        y = self.head(torch.cat([y, self.stem(x)], 1))
        return y[..., :h, :w]


@dataclass
class Judge:
    """A loaded judge: ``net`` (eval mode, frozen), its ``labels``, where it came from (``name``) and its
    training log (``info``, may be empty)."""

    net: JudgeNet
    name: str
    info: dict = field(default_factory=dict)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.net.config.labels

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device=None, dtype=None) -> "Judge":
        self.net.to(device=device, dtype=dtype)
        return self

    def index(self, label: str) -> int:
        try:
            return self.labels.index(label)
        except ValueError:
            raise ValueError(f"unknown label {label!r}; the judge knows {', '.join(self.labels)}") from None

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"expected a B x 3 x H x W image tensor in [-1, 1], got {shape}")
        param = next(self.net.parameters())
        return self.net(images.to(param.device, param.dtype).clamp(-1, 1))

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """``B x H x W`` label indices (into :attr:`labels`) of images in [-1, 1]."""
        return self.logits(images).argmax(1)

    def fractions(self, labels: torch.Tensor, targets, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per sample, the fraction of the (soft) ``mask``'s pixels (``H x W`` or ``B x H x W`` weights; default
        all) whose label is one of ``targets`` (names); ``labels`` is a :meth:`segment` output."""
        names = [targets] if isinstance(targets, str) else list(targets)
        hit = torch.zeros_like(labels, dtype=torch.float64)
        for name in names:
            hit += (labels == self.index(name)).double()
        weight = torch.ones_like(hit) if mask is None else mask.to(hit.device, torch.float64).expand_as(hit)
        return (hit * weight).sum((-2, -1)) / weight.sum((-2, -1)).clamp_min(1e-12)


def judge_dir(name: str = "default") -> Path:
    """The directory of a shipped judge (clear error if it is missing)."""
    from . import pretrained

    if name not in pretrained.NAMES:
        raise ValueError(f"unknown pretrained judge {name!r}; shipped: {pretrained.NAMES}")
    return pretrained.ROOT / name / "judge"


def load_judge(name_or_path: str | Path = "default", device=None) -> Judge:
    """Load a judge offline: ``"default"`` (shipped in ``infd_solve.pretrained``) or a directory written by
    ``recipes/train_judge.py`` (``config.json`` + ``model.safetensors``, ``train_log.json`` beside them)."""
    from . import pretrained

    if isinstance(name_or_path, str) and name_or_path in pretrained.NAMES:
        path, shipped = judge_dir(name_or_path), True
    else:
        path, shipped = Path(name_or_path).expanduser(), False
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        remedy = ("Reinstall infd-solve, or train it with recipes/train_judge.py" if shipped else
                  "Train one with: python recipes/train_judge.py --out DIR")
        raise FileNotFoundError(f"no judge at {path}: expected {CONFIG_FILE} and {WEIGHTS_FILE}. {remedy} "
                                "(nothing is downloaded).")
    from .checkpoints import CheckpointError

    try:
        raw = json.loads(config_path.read_text())
        if raw.get("format") != FORMAT_NAME:
            raise ValueError(f"format is {raw.get('format')!r}, not {FORMAT_NAME!r}")
        config = JudgeConfig(labels=raw["labels"], channels=raw["channels"], stem=raw["stem"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{config_path} is not a judge config: {e}") from None
    from safetensors.torch import load_file

    net = JudgeNet(config)
    try:
        state = load_file(str(weights_path))
        net.load_state_dict({k: v.float() for k, v in state.items()})
    except Exception as e:  # corrupt file, or weights of another architecture
        raise CheckpointError(f"{weights_path}: cannot load judge weights ({type(e).__name__}: "
                              f"{str(e)[:300]})") from None
    net = net.eval().requires_grad_(False)
    if device is not None:
        net = net.to(device)
    log = path / "train_log.json"
    info = json.loads(log.read_text()) if log.is_file() else {}
    return Judge(net=net, name=str(path), info=info)
