"""Pictures people look at: layouts drawn over results, loss curves, before/after comparisons.

Every function writes one PNG atomically and returns its path. matplotlib is imported on first use, with the
non-interactive Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from .io import save_figure, to_pil

PALETTE = ("#e6194b", "#3cb44b", "#9a6324", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _as_pil(image) -> Image.Image:
    """A path, a PIL image or a ``[1 x] 3 x H x W`` tensor in [-1, 1] -> an RGB PIL image."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            return im.convert("RGB")
    if torch.is_tensor(image):
        return to_pil(image[0] if image.dim() == 4 else image)
    return image.convert("RGB")


def _thumbnail(image: Image.Image, max_pixels: int) -> Image.Image:
    image = image.copy()
    image.thumbnail((max_pixels, max_pixels), Image.LANCZOS)
    return image


def _draw_geometry(ax, geometry, **style):
    from matplotlib.patches import Polygon

    for g in getattr(geometry, "geoms", [geometry]):
        if hasattr(g, "exterior"):
            ax.add_patch(Polygon(list(g.exterior.coords), closed=True, **style))


def plot_layout(images: Sequence, canvas: tuple[int, int], constraints, path: str | Path,
                max_pixels: int = 1024) -> Path:
    """Each constraint's region drawn over each image (axes in canvas fractions, y down), labelled with its
    ``label``: polygons as drawn (their rendered bounding box dotted), observations dashed."""
    from matplotlib.patches import Rectangle

    plt = _pyplot()
    h, w = canvas
    fig, axes = plt.subplots(1, len(images), figsize=(8.0 * len(images), 8.0 * h / w + 0.6), squeeze=False)
    for ax, image in zip(axes[0], images):
        ax.imshow(_thumbnail(_as_pil(image), max_pixels), extent=(0, 1, 1, 0), interpolation="lanczos")
        for k, c in enumerate(constraints):
            colour = PALETTE[k % len(PALETTE)]
            left, top, right, bottom = c.box
            style = {"fill": False, "edgecolor": colour, "linewidth": 2.0, "linestyle": c.overlay_linestyle}
            if c.geometry is not None:
                _draw_geometry(ax, c.geometry, **style)
                style |= {"linewidth": 0.8, "linestyle": ":"}
            ax.add_patch(Rectangle((left, top), right - left, bottom - top, **style))
            face = getattr(c, "label_color", (1.0, 1.0, 1.0))  # a colour item's label sits on its target colour
            luminance = 0.299 * face[0] + 0.587 * face[1] + 0.114 * face[2]
            label = f"{k}: {c.label}" + (f" (w={c.weight:g})" if c.weight != c.default_weight else "")
            label = label.encode("utf-8", "backslashreplace").decode("utf-8")  # nothing unprintable in a figure
            ax.text(left + 0.005, top + 0.005, label, fontsize=9, va="top", ha="left",
                    color="black" if luminance > 0.5 else "white",
                    bbox={"facecolor": face, "edgecolor": colour, "alpha": 0.85, "boxstyle": "round,pad=0.2"})
        ax.set_xlim(0, 1)
        ax.set_ylim(1, 0)
        ax.set_aspect(h / w)
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1])
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1])
        ax.tick_params(labelsize=7)
        name = f"{Path(image).name}  " if isinstance(image, (str, Path)) else ""
        ax.set_title(f"{name}({h}x{w})", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, Path(path), dpi=100)


def plot_losses(history: dict, path: str | Path) -> Path:
    """Loss per constraint over the steps of a solve (mean over the batch; ``Result.history``), refinement
    marked; a log axis, or symlog when some loss is an exact fit (0)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in history["loss"].items():
        steps = [i for i, v in enumerate(values) if v is not None]
        ax.plot(steps, [float(values[i].mean()) for i in steps], label=name)
    sampling_steps = history.get("sampling_steps", len(history["timesteps"]))
    if len(history["timesteps"]) > sampling_steps:
        ax.axvline(sampling_steps - 0.5, color="gray", linestyle=":", label="refinement starts")
        ax.set_xlabel("step (sampling, then refinement)")
    else:
        ax.set_xlabel("sampling step")
    ax.set_ylabel("constraint loss (batch mean)")
    means = [float(v.mean()) for values in history["loss"].values() for v in values if v is not None]
    if means and min(means) <= 0:  # a log axis would drop exact fits: linear near zero
        ax.set_yscale("symlog", linthresh=min([v for v in means if v > 0], default=1e-6))
    else:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, Path(path), dpi=100)


def plot_super_resolution(observed: torch.Tensor, result, path: str | Path, max_pixels: int = 768) -> Path:
    """The input (nearest), bicubic upsampling and the result (an image, path or tensor) side by side; the
    second row zooms on the central quarter."""
    import torch.nn.functional as F

    plt = _pyplot()
    ours = _as_pil(result)
    side = ours.size[0]
    bicubic = to_pil(F.interpolate(observed.cpu(), size=(side, side), mode="bicubic", align_corners=False)
                     .clamp(-1, 1)[0])
    nearest = to_pil(observed[0].cpu()).resize((side, side), Image.NEAREST)
    panels = [(f"input {observed.shape[-2]}x{observed.shape[-1]} (nearest)", nearest),
              (f"bicubic {side}x{side}", bicubic), (f"ours {side}x{side}", ours)]
    lo, hi = side * 3 // 8, side * 5 // 8  # central quarter of the side (1/16 of the area)
    fig, axes = plt.subplots(2, 3, figsize=(13.5, 9.4))
    for col, (title, image) in enumerate(panels):
        axes[0, col].imshow(_thumbnail(image, max_pixels))
        axes[0, col].set_title(title, fontsize=10)
        axes[1, col].imshow(image.crop((lo, lo, hi, hi)), interpolation="nearest")
        axes[1, col].set_title(f"zoom: pixels {lo}-{hi}", fontsize=9)
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return save_figure(fig, Path(path), dpi=100)


def plot_inpainting(image: torch.Tensor, mask: torch.Tensor, on_box: torch.Tensor, path: str | Path,
                    canvas=None, box=None, max_pixels: int = 768) -> Path:
    """The input with the part to fill shaded magenta, the result on the image's box, and (when the image
    covers only ``box`` of the canvas) the whole ``canvas`` image with that box marked."""
    from matplotlib.patches import Rectangle

    plt = _pyplot()
    image, mask = image[0].cpu(), mask[0].cpu()
    shade = torch.tensor([1.0, -1.0, 1.0]).view(3, 1, 1)
    shown = image * mask + (0.35 * image + 0.65 * shade) * (1 - mask)
    panels = [("input (magenta: to fill)", to_pil(shown)), ("result on the image's box", _as_pil(on_box))]
    if canvas is not None:
        whole = _as_pil(canvas)
        panels.append((f"result: whole canvas {whole.size[1]}x{whole.size[0]}", whole))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 5.2), squeeze=False)
    for k, (ax, (title, picture)) in enumerate(zip(axes[0], panels)):
        ax.imshow(_thumbnail(picture, max_pixels), extent=(0, 1, 1, 0))
        if k == 2 and box is not None:  # where the image lies on the canvas
            left, top, right, bottom = box
            ax.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, edgecolor="magenta",
                                   linestyle="--", linewidth=1.5))
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return save_figure(fig, Path(path), dpi=100)


def image_rows(rows: Sequence[tuple[str, Sequence]], titles: Sequence[str], path: str | Path,
               panel: float = 3.0, dpi: int = 70) -> Path:
    """A grid of images (tensors in [-1, 1], PIL images or paths): one row per ``(row label, images)``,
    columns titled ``titles``; for evaluation and benchmark figures (before / after / truth)."""
    plt = _pyplot()
    columns = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(panel * columns, panel * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(columns):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(images):
                ax.imshow(_as_pil(images[c]))
                ax.set_title(f"{label}: {titles[c]}" if c == 0 else titles[c], fontsize=8)
    fig.tight_layout()
    return save_figure(fig, Path(path), dpi=dpi)


def plot_training(history: dict, path: str | Path, title: str, log: bool = True,
                  validation: tuple[str, list, list] | None = None) -> Path:
    """Training curves: ``history`` maps ``"step"`` to the logged steps and each loss name to its values
    (lists of equal length), smoothed over about 1 % of the run; log axis by default. ``validation``:
    ``(name, steps, values)`` of a held-out measure, drawn on a second axis."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in history.items():
        if name == "step" or not len(values):
            continue
        v = np.asarray(values, dtype=float)
        k = max(1, len(v) // 100)
        smooth = np.convolve(v, np.ones(k) / k, mode="valid")
        ax.plot(list(history["step"])[k - 1 :][: len(smooth)], smooth, label=name)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a run of 0 steps (a config change alone) has no curves
        ax.legend(loc="upper left")
    if validation is not None and len(validation[1]):
        name, steps, values = validation
        twin = ax.twinx()
        twin.plot(steps, values, "o-", color="C3", ms=3, label=name)
        twin.set_ylabel(name)
        twin.legend(loc="upper right")
    fig.tight_layout()
    return save_figure(fig, Path(path), dpi=100)
