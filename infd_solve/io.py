"""Safe file output and image input.

Outputs are written to a temporary sibling and renamed into place, so an interrupted run (Ctrl-C included)
never leaves a half-written file; an output path that is also an input is refused.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
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
