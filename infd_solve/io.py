"""Safe file output and image input.

Outputs are written to a temporary sibling and renamed into place, so an interrupted run (Ctrl-C included)
never leaves a half-written file; an output path that is also an input is refused.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import struct
import tempfile
import warnings
import zlib
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


def check_output(path: str | Path) -> Path:
    """An output image path that can be written, checked before any work: not empty, not a directory, under
    a directory that exists or can be made and that we may write to, with an extension PIL writes RGB images
    in. ``ValueError`` naming the real path otherwise."""
    if not str(path).strip():
        raise ValueError("output path is empty")
    path = Path(path).expanduser()
    shown = path.resolve()
    if path.is_dir():
        raise ValueError(f"output {shown} is a directory; give a file name such as {shown / 'out.png'}")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"output {shown}: {parent.resolve()} is a file, not a directory")
    try:  # the one sure test (permission bits do not bind root; read-only mounts ignore them)
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as e:
        raise ValueError(f"output {shown}: cannot write in {parent.resolve()} ({e.strerror or e})") from None
    fmt = Image.registered_extensions().get(path.suffix.lower())
    try:
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=fmt)  # the format must take an RGB image
    except (KeyError, ValueError, OSError, TypeError):
        raise ValueError(f"output {shown}: cannot write RGB images as {path.suffix or 'a file without extension'!r}; "
                         "use .png") from None
    return path


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """``... x 3 x H x W`` in [-1, 1] -> ``... x H x W x 3`` uint8 on the CPU (clamped and rounded, as the
    official sampler saves)."""
    return ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().movedim(-3, -1).cpu()


def write_png(path: str | Path, height: int, width: int, bands: Iterable[np.ndarray]) -> Path:
    """Write an 8-bit RGB PNG atomically from ``bands`` (``rows x width x 3`` uint8 arrays, top to bottom),
    compressing as they come: memory stays at one band, however large the image."""

    def chunk(f, kind: bytes, data: bytes) -> None:
        f.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        chunk(f, b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))  # 8-bit RGB
        compressor, rows = zlib.compressobj(6), 0
        for band in bands:
            if band.dtype != np.uint8 or band.ndim != 3 or band.shape[1:] != (width, 3):
                raise ValueError(f"a PNG band must be rows x {width} x 3 uint8, got {band.shape} {band.dtype}")
            for row in band:  # each scanline: filter type 0 (none), then its pixels
                data = compressor.compress(b"\x00" + row.tobytes())
                if data:
                    chunk(f, b"IDAT", data)
            rows += band.shape[0]
        if rows != height:
            raise ValueError(f"the bands hold {rows} rows, the PNG {height}")
        chunk(f, b"IDAT", compressor.flush())
        chunk(f, b"IEND", b"")
    return path


def to_pil(image: torch.Tensor) -> Image.Image:
    """A ``3 x H x W`` tensor in [-1, 1] -> 8-bit RGB image (clamped, as the official sampler saves)."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a 3 x H x W image tensor, got shape {tuple(image.shape)}")
    return Image.fromarray(to_uint8(image).numpy())


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
    """A fully read PIL image; errors name the file. Images declaring more pixels than PIL's decompression-bomb
    limit (``Image.MAX_IMAGE_PIXELS`` x 2) are refused before their pixels are decoded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no {kind} file at {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                with Image.open(path) as im:
                    im.load()
                    return im
            except Image.DecompressionBombWarning:  # large, but below PIL's hard limit: load it, and say so
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    im.load()
                    warnings.warn(f"{name}: {path} is large ({im.size[0]}x{im.size[1]} pixels)", stacklevel=4)
                    return im
    except Image.DecompressionBombError as e:  # PIL's message holds the declared pixel count
        declared = next(iter(re.findall(r"\((\d+) pixels\)", str(e))), "?")
        raise ValueError(f"{name}: {path} declares {declared} pixels, more than the {2 * Image.MAX_IMAGE_PIXELS} "
                         "an image may have here (a decompression bomb, or too large to load)") from None
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, zlib errors ...
        raise ValueError(f"{name}: cannot read {path} as an image ({type(e).__name__}: {e})") from None
def _unit_range(im: Image.Image, name: str, kind: str) -> np.ndarray:
    """Pixels of a 16-bit, 32-bit integer or float image scaled to [0, 1], with a warning saying how."""
    array = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        if not np.isfinite(array).all():
            raise ValueError(f"{name}: float image (mode F) contains NaN or inf")
        low, high = float(array.min()), float(array.max())
        if low >= 0 and high <= 1:
            scale, how = 1.0, "read as values in [0, 1]"
        elif low >= 0 and high <= 255:
            scale, how = 255.0, "scaled from [0, 255] to [0, 1]"
        else:
            raise ValueError(f"{name}: float image (mode F) has values in [{low:.4g}, {high:.4g}]; expected [0, 1] "
                             "or [0, 255]")
    elif im.mode.startswith("I;16") or array.max() > 255:
        scale, how = 65535.0, "(16-bit) scaled to [0, 1]"
    else:
        scale, how = 255.0, "(8-bit values) scaled to [0, 1]"
    warnings.warn(f"{name}: {kind} of mode {im.mode} {how}", stacklevel=4)
    return np.clip(array / scale, 0, 1).astype(np.float32)


def _tensor(value, name: str) -> torch.Tensor:
    """A torch tensor from a tensor or numpy array (any other type is refused by the caller)."""
    x = torch.as_tensor(np.asarray(value)) if isinstance(value, np.ndarray) else value
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    return x.detach().float()


def load_image(image, name: str = "image") -> torch.Tensor:
    """``1 x 3 x H x W`` (or ``B x 3 x H x W``) float tensor in [-1, 1] from a tensor or numpy array (``3 x H x W``
    or ``B x 3 x H x W`` in [-1, 1]), a PIL image or a file path.

    PIL modes other than RGB are converted, with a warning that says so: alpha is composited on black,
    palettes expanded, grayscale replicated, 16-bit and float images scaled to [0, 1] first.
    """
    if isinstance(image, (str, Path)):
        return load_image(_open(image, name), f"{name} ({Path(image).name})")
    if isinstance(image, Image.Image):
        return _from_pil(image, name)
    if torch.is_tensor(image) or isinstance(image, np.ndarray):
        x = _tensor(image, name)
        if x.dim() == 3:
            x = x[None]
        if x.dim() != 4 or x.shape[1] != 3:
            hint = "; channels last? pass it as 3 x H x W" if x.shape[-1] == 3 else ""
            raise ValueError(f"{name} must be 3 x H x W or B x 3 x H x W, got shape {tuple(image.shape)}{hint}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or inf")
        if x.min() < -1 - 1e-3 or x.max() > 1 + 1e-3:
            raise ValueError(f"{name} must be in [-1, 1] (got values in [{x.min():.3g}, {x.max():.3g}]); "
                             "for [0, 1] images pass image * 2 - 1")
        return x.clamp(-1, 1)
    raise ValueError(f"{name} must be a tensor, a PIL image or a file path, got {type(image).__name__}")


def _from_pil(im: Image.Image, name: str) -> torch.Tensor:
    mode = im.mode
    if 0 in im.size:
        raise ValueError(f"{name} is empty ({im.size[0]}x{im.size[1]} pixels)")
    if mode in SIXTEEN_BIT or mode == "F":
        rgb = np.repeat(_unit_range(im, name, "image")[..., None], 3, axis=-1)
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
    """``1 x 1 x H x W`` float mask in [0, 1] (1 = observed) from a tensor or numpy array, PIL image or file
    path."""
    if isinstance(mask, (str, Path)):
        return load_mask(_open(mask, name, "mask"), f"{name} ({Path(mask).name})")
    if isinstance(mask, Image.Image):
        if 0 in mask.size:
            raise ValueError(f"{name} is empty ({mask.size[0]}x{mask.size[1]} pixels)")
        if mask.mode in SIXTEEN_BIT or mask.mode == "F":
            array = _unit_range(mask, name, "mask")
        else:
            if mask.mode not in ("L", "1"):
                warnings.warn(f"{name}: mask of mode {mask.mode} converted to grayscale (white = observed)",
                              stacklevel=2)
            array = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
        return torch.from_numpy(np.ascontiguousarray(array))[None, None]
    if torch.is_tensor(mask) or isinstance(mask, np.ndarray):
        m = _tensor(mask, name)
        while m.dim() < 4:
            m = m[None]
        if m.dim() != 4 or m.shape[:2] != (1, 1):
            raise ValueError(f"{name} must be H x W, 1 x H x W or 1 x 1 x H x W, got shape {tuple(mask.shape)}")
        if not torch.isfinite(m).all() or m.min() < 0 or m.max() > 1:
            raise ValueError(f"{name} must have values in [0, 1]")
        return m
    raise ValueError(f"{name} must be a tensor, a PIL image or a file path, got {type(mask).__name__}")
