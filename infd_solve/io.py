"""Safe file output and image input.

Outputs are written to a temporary sibling and renamed into place, so an interrupted run (Ctrl-C included)
never leaves a half-written file; an output path that is also an input is refused.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from PIL import Image


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give outputs the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; it becomes ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        for f in tmp.rglob("*"):
            if f.is_file():
                os.chmod(f, 0o666 & ~_umask())
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def refuse_overwriting_inputs(outputs: Iterable[str | Path], inputs: Iterable[str | Path]) -> None:
    """Raise if any output path is one of the inputs (inputs are never overwritten)."""
    resolved = {Path(p).resolve() for p in inputs if p is not None}
    for out in outputs:
        if Path(out).resolve() in resolved:
            raise ValueError(f"output {out} is also an input; choose another output path")


def to_pil(image: torch.Tensor) -> Image.Image:
    """A ``3 x H x W`` tensor in [-1, 1] -> 8-bit RGB image (clamped, as the official sampler saves)."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a 3 x H x W image tensor, got shape {tuple(image.shape)}")
    array = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte()
    return Image.fromarray(array.permute(1, 2, 0).numpy())


def save_image(image: torch.Tensor | Image.Image, path: str | Path) -> Path:
    """Save atomically; the format follows the suffix (PNG recommended)."""
    pil = to_pil(image) if torch.is_tensor(image) else image
    path = Path(path)
    with atomic_path(path) as tmp:
        pil.save(tmp, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    return path


def center_square(image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """The central square of ``... x H x W`` (side min(H, W)) and its top-left ``(row, column)``."""
    h, w = image.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[..., top : top + side, left : left + side], (top, left)


def image_grid(images: torch.Tensor, columns: int | None = None, gap: int = 2) -> torch.Tensor:
    """``B x 3 x H x W`` -> one ``3 x H' x W'`` grid (white gaps), for looking at several samples at once."""
    b, c, h, w = images.shape
    columns = columns or int(np.ceil(np.sqrt(b)))
    rows = int(np.ceil(b / columns))
    grid = torch.ones(c, rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, dtype=images.dtype)
    for k in range(b):
        r, col = divmod(k, columns)
        grid[:, r * (h + gap) : r * (h + gap) + h, col * (w + gap) : col * (w + gap) + w] = images[k].cpu()
    return grid


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG atomically, then close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------- inputs
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")


def _open(path, name: str, kind: str = "image") -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no {kind} file at {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return im
    except OSError as e:
        raise ValueError(f"{name}: cannot read {path} as an image ({e})") from None


def _unit_range(im: Image.Image) -> np.ndarray:
    """16-bit / integer pixels scaled to [0, 1]."""
    array = np.asarray(im, dtype=np.float32)
    return np.clip(array / (65535.0 if im.mode.startswith("I;16") or array.max() > 255 else 255.0), 0, 1)


def load_image(image, name: str = "image") -> torch.Tensor:
    """``1 x 3 x H x W`` (or ``B x 3 x H x W``) float tensor in [-1, 1] from a tensor, PIL image or file path.

    PIL modes other than RGB are converted, with a warning that says so: alpha is composited on black,
    palettes expanded, grayscale replicated, 16-bit scaled to 8-bit range.
    """
    if isinstance(image, (str, Path)):
        return load_image(_open(image, name), f"{name} ({Path(image).name})")
    if isinstance(image, Image.Image):
        return _from_pil(image, name)
    if torch.is_tensor(image):
        x = image.detach().float()
        if x.dim() == 3:
            x = x[None]
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{name} must be 3 x H x W or B x 3 x H x W, got shape {tuple(image.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or inf")
        if x.min() < -1 - 1e-3 or x.max() > 1 + 1e-3:
            raise ValueError(f"{name} must be in [-1, 1] (got values in [{x.min():.3g}, {x.max():.3g}]); "
                             "for [0, 1] images pass image * 2 - 1")
        return x.clamp(-1, 1)
    raise ValueError(f"{name} must be a tensor, a PIL image or a file path, got {type(image).__name__}")


def _from_pil(im: Image.Image, name: str) -> torch.Tensor:
    mode = im.mode
    if mode in SIXTEEN_BIT:
        array = _unit_range(im)
        warnings.warn(f"{name}: 16-bit/integer image (mode {mode}) converted to RGB in [-1, 1]", stacklevel=3)
        rgb = np.repeat(array[..., None], 3, axis=-1)
    else:
        if mode != "RGB":
            if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
                im = Image.alpha_composite(background, rgba).convert("RGB")
                warnings.warn(f"{name}: image with alpha (mode {mode}) composited on black and converted to RGB",
                              stacklevel=3)
            else:
                im = im.convert("RGB")
                warnings.warn(f"{name}: image mode {mode} converted to RGB", stacklevel=3)
        rgb = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None] * 2 - 1


def load_mask(mask, name: str = "mask") -> torch.Tensor:
    """``1 x 1 x H x W`` float mask in [0, 1] (1 = observed) from a tensor, PIL image or file path."""
    if isinstance(mask, (str, Path)):
        return load_mask(_open(mask, name, "mask"), f"{name} ({Path(mask).name})")
    if isinstance(mask, Image.Image):
        if mask.mode in SIXTEEN_BIT:
            array = _unit_range(mask)
            warnings.warn(f"{name}: 16-bit/integer mask (mode {mask.mode}) scaled to [0, 1]", stacklevel=2)
        else:
            if mask.mode not in ("L", "1"):
                warnings.warn(f"{name}: mask of mode {mask.mode} converted to grayscale (white = observed)",
                              stacklevel=2)
            array = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
        return torch.from_numpy(np.ascontiguousarray(array))[None, None]
    if torch.is_tensor(mask):
        m = mask.detach().float()
        while m.dim() < 4:
            m = m[None]
        if m.dim() != 4 or m.shape[:2] != (1, 1):
            raise ValueError(f"{name} must be H x W, 1 x H x W or 1 x 1 x H x W, got shape {tuple(mask.shape)}")
        if not torch.isfinite(m).all() or m.min() < 0 or m.max() > 1:
            raise ValueError(f"{name} must have values in [0, 1]")
        return m
    raise ValueError(f"{name} must be a tensor, a PIL image or a file path, got {type(mask).__name__}")
