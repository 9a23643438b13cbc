"""An independent judge of layouts: a small segmentation network for the procedural landscapes' labels.

Guidance is scored by the CLIP that guides it, and guidance can fool its own CLIP. The judge is trained on the
landscapes' own per-pixel ground truth (``infd_solve.data.landscapes.LABELS``) and never used for guidance, so
it says what a box actually holds. ``load_judge("default")`` loads the one shipped in ``infd_solve.pretrained``
(trained by ``recipes/train_judge.py``; accuracy in ``pretrained/MODEL_CARD.md``), offline.

Images are ``B x 3 x H x W`` tensors in [-1, 1] (the diffusion convention), any size (padded internally to a
multiple of the network's stride).

Judging a layout (``recipes/eval_layouts.py``): each "clip" item's prompt names the labels it asks for
(:data:`PROMPT_LABELS`); :func:`judge_layout_items` measures, per item and sample, the share of its region with
those labels, the share outside every region asking for them (leakage) and the share in the mirrored box;
:func:`summarize_layout_items` turns guided-vs-unguided rows into the summary the targets are stated in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["JudgeConfig", "JudgeNet", "Judge", "load_judge", "CONFIG_FILE", "WEIGHTS_FILE", "PROMPT_LABELS",
           "target_labels", "judge_layout_items", "summarize_layout_items", "layout_items_markdown", "label_colours",
           "save_judge", "confusion_counts"]

PROMPT_LABELS = {
    "clouds": ("cloud",), "a cloudy sky": ("cloud",), "a clear sky": ("sky",), "the sun": ("sun",),
    "the moon": ("moon",), "snowy mountains": ("snow", "mountain"), "snowy peaks": ("snow", "mountain"),
    "rocky mountains": ("mountain", "snow"), "a forest": ("forest",), "a grassy meadow": ("grass",),
    "a lake": ("water",), "fog": ("fog",),
}
PALETTE = {"sky": (0.55, 0.75, 0.95), "cloud": (1.0, 1.0, 1.0), "sun": (1.0, 0.85, 0.1), "moon": (0.9, 0.9, 0.7),
           "mountain": (0.5, 0.45, 0.4), "snow": (0.75, 0.95, 1.0), "forest": (0.1, 0.4, 0.15),
           "grass": (0.5, 0.8, 0.25), "water": (0.1, 0.3, 0.85), "fog": (0.8, 0.7, 0.9)}
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


def save_judge(net: JudgeNet, directory: str | Path) -> Path:
    """Write ``net`` as a directory :func:`load_judge` reads: ``config.json`` and float16 safetensors weights,
    each file atomically."""
    from safetensors.torch import save_file

    from .io import atomic_path

    directory = Path(directory)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in net.state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "producer": "infd-solve recipes/train_judge.py"})
    with atomic_path(directory / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(net.config.to_dict(), indent=2) + "\n")
    return directory


def confusion_counts(net, images_u8: np.ndarray, labels: np.ndarray, chunk: int = 8) -> np.ndarray:
    """``classes x classes`` pixel counts (rows: truth, columns: prediction) of ``net`` (a :class:`JudgeNet` or
    :class:`Judge`) on uint8 ``N x H x W x 3`` images with their ``N x H x W`` labels."""
    from .data.crops import to_batch

    net = getattr(net, "net", net)
    classes = len(net.config.labels)
    counts = np.zeros((classes, classes), np.int64)
    with torch.no_grad():
        for i in range(0, len(images_u8), chunk):
            pred = net(to_batch(images_u8[i:i + chunk])).argmax(1).numpy().ravel()
            truth = labels[i:i + chunk].astype(np.int64).ravel()
            counts += np.bincount(truth * classes + pred, minlength=classes * classes).reshape(classes, classes)
    return counts


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
    from .checkpoints import CheckpointError, MissingCheckpointError

    if isinstance(name_or_path, str) and name_or_path in pretrained.NAMES:
        path, shipped = judge_dir(name_or_path), True
    else:
        path, shipped = Path(name_or_path).expanduser(), False
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        remedy = ("Reinstall infd-solve, or train it with recipes/train_judge.py" if shipped else
                  "Train one with: python recipes/train_judge.py --out DIR")
        raise MissingCheckpointError(f"no judge at {path}: expected {CONFIG_FILE} and {WEIGHTS_FILE}. {remedy} "
                                     "(nothing is downloaded).")

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


# ------------------------------------------------------------------------------------------- judging layouts
def target_labels(prompt: str) -> tuple[str, ...]:
    """The labels a prompt asks for (:data:`PROMPT_LABELS`)."""
    try:
        return PROMPT_LABELS[prompt]
    except KeyError:
        raise ValueError(f"prompt {prompt!r} has no label mapping; add it to PROMPT_LABELS") from None


def _region(constraint):
    import shapely

    return constraint.geometry if constraint.geometry is not None else shapely.box(*constraint.box)


def judge_layout_items(judge: Judge, labels: torch.Tensor, constraints, canvas) -> list[dict]:
    """Per item with a ``prompt`` (``ClipBox``), per sample of ``labels`` (:meth:`Judge.segment` of the canvas
    at ``canvas``): ``in``, the share of its region labelled as asked; ``outside``, the same share outside
    every region asking for any of those labels; ``mirror``, the share in the box mirrored left-right (only
    when that box barely overlaps the region)."""
    import shapely

    from .regions import rasterize

    full = (0.0, 0.0, 1.0, 1.0)
    items = [c for c in constraints if hasattr(c, "prompt")]
    masks = {c.name: rasterize(_region(c), full, canvas)[0, 0] for c in items}
    out = []
    for c in items:
        targets = target_labels(c.prompt)
        asking = [o for o in items if set(target_labels(o.prompt)) & set(targets)]
        union = torch.stack([masks[o.name] for o in asking]).amax(0)
        left, top, right, bottom = c.box
        mirror = shapely.box(1 - right, top, 1 - left, bottom)
        row = {"name": c.name, "prompt": c.prompt, "labels": targets,
               "in": judge.fractions(labels, targets, masks[c.name]).tolist(),
               "outside": judge.fractions(labels, targets, 1 - union).tolist()}
        if mirror.intersection(_region(c)).area < 0.05 * mirror.area:
            row["mirror"] = judge.fractions(labels, targets, rasterize(mirror, full, canvas)[0, 0]).tolist()
        out.append(row)
    return out


def summarize_layout_items(items: list[dict]) -> dict:
    """The summary of rows with per-seed lists ``judge_guided``, ``judge_unguided``, ``outside_guided``,
    ``outside_unguided``, ``clip_guided``, ``clip_unguided``: wins, shares in the box, leakage and how often
    the guiding CLIP agrees with the judge (per item on seed means, and per item and seed)."""
    def mean(v):
        return float(np.mean(v))

    g, u, cg, cu = (np.array([mean(i[k]) for i in items])
                    for k in ("judge_guided", "judge_unguided", "clip_guided", "clip_unguided"))
    leak = np.array([mean(i["outside_guided"]) - mean(i["outside_unguided"]) for i in items])
    per_g, per_u, per_cg, per_cu = (np.concatenate([i[k] for i in items])
                                    for k in ("judge_guided", "judge_unguided", "clip_guided", "clip_unguided"))
    return {
        "items": len(items),
        "guided beats unguided (judge, % of items)": round(100 * float((g > u).mean()), 1),
        "mean target share in box, guided": round(float(g.mean()), 3),
        "mean target share in box, unguided": round(float(u.mean()), 3),
        "mean leakage (share outside, guided - unguided)": round(float(leak.mean()), 3),
        "CLIP and judge agree (% of items)": round(100 * float((np.sign(cg - cu) == np.sign(g - u)).mean()), 1),
        "guided beats unguided (judge, % of item-seeds)": round(100 * float((per_g > per_u).mean()), 1),
        "CLIP and judge agree (% of item-seeds)":
            round(100 * float((np.sign(per_cg - per_cu) == np.sign(per_g - per_u)).mean()), 1),
        "mean CLIP similarity, guided": round(float(cg.mean()), 3),
        "mean CLIP similarity, unguided": round(float(cu.mean()), 3),
    }


def layout_items_markdown(items: list[dict]) -> str:
    """A Markdown table of judged items (the rows :func:`summarize_layout_items` takes, plus ``layout``,
    ``prompt``, ``labels`` and optional ``mirror_guided`` / ``mirror_unguided``), values as seed means."""
    def mean(v):
        return float(np.mean(v))

    lines = ["| layout | prompt (labels) | in box: guided / unguided | leakage | mirror box: guided / unguided "
             "| CLIP: guided / unguided | judge wins | CLIP agrees |", "|---|---|---|---|---|---|---|---|"]
    for i in items:
        g, u, cg, cu = (mean(i[k]) for k in ("judge_guided", "judge_unguided", "clip_guided", "clip_unguided"))
        leak = mean(i["outside_guided"]) - mean(i["outside_unguided"])
        mirror = f"{mean(i['mirror_guided']):.2f} / {mean(i['mirror_unguided']):.2f}" if "mirror_guided" in i else ""
        lines.append(f"| {i['layout']} | {i['prompt']} ({', '.join(i['labels'])}) | {g:.2f} / {u:.2f} | {leak:+.3f} "
                     f"| {mirror} | {cg:.2f} / {cu:.2f} | {'yes' if g > u else 'no'} "
                     f"| {'yes' if np.sign(cg - cu) == np.sign(g - u) else 'no'} |")
    return "\n".join(lines)


def label_colours(labels: torch.Tensor, names) -> torch.Tensor:
    """``H x W`` label indices -> ``3 x H x W`` colours in [-1, 1] (:data:`PALETTE`), for figures."""
    colours = torch.tensor([PALETTE.get(n, (0.5, 0.5, 0.5)) for n in names])
    return colours[labels].permute(2, 0, 1) * 2 - 1
