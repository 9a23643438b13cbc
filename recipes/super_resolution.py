"""Super-resolution at any size: the whole canvas must explain a low-resolution image (LowResObservation).

Usage::

    python recipes/super_resolution.py small.png --size 2048 -o outputs/big.png
    python recipes/super_resolution.py small.png --scale 8 -o outputs/big.png --operator render --noise-sigma 0.02
    python recipes/super_resolution.py wide.png --scale 4 --crop -o outputs/big.png

The field is sampled by guided DDIM so that the canvas, seen through ``--operator``, reproduces the input:
``render`` renders the field directly on the input's pixel grid (any, non-integer factor), ``area`` /
``bicubic`` render at ``--factor`` x the input size and average / bicubic-downsample. ``--noise-sigma`` is the
observation noise in [-1, 1] units (8-bit noise of s levels is s / 127.5). The result is rendered at
``--size`` (or ``--scale`` x the input side) in tiles.

Writes ``OUT`` and ``OUT_compare.png`` (input, bicubic upsampling and ours, with a zoom on the centre), and
prints the measurement consistency: the result seen through the same operator vs the input, as PSNR.

The canvas of an INFD model is square: a non-square input is refused unless ``--crop`` centre-crops it to its
short side (a note says so). Images with alpha, palettes, 16 bits or one channel are converted to RGB with a
note. Files are written atomically and an input is never overwritten; bad input ends with a one-line error and
exit code 2, Ctrl-C with 130.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

# infd_solve.models first: importing infd_solve.rendering before the models package is circular.
from infd_solve import cli
from infd_solve.constraint import load_image
from infd_solve.constraints import LowResObservation
from infd_solve.constraints.lowres_observation import OPERATORS
from infd_solve.io import refuse_overwriting_inputs, to_pil, save_figure
from infd_solve.rendering import FULL_CANVAS

PROG = "super_resolution.py"
MAX_SIZE = 32768


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="low-resolution image (square, or use --crop)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--size", type=int, help="output side in pixels (the canvas is square)")
    target.add_argument("--scale", type=float, help="output side = scale x input side (any factor >= 1)")
    p.add_argument("-o", "--out", default=None, help="output image (default outputs/INPUT_NAME_sr.png)")
    p.add_argument("--operator", choices=OPERATORS, default="area",
                   help="how the canvas becomes the input: area average (default), bicubic, or render on its grid")
    p.add_argument("--factor", type=int, default=4,
                   help="area/bicubic: render at factor x the input size before downsampling (default 4)")
    p.add_argument("--noise-sigma", type=float, default=0.0,
                   help="observation noise std in [-1, 1] units (default 0)")
    p.add_argument("--crop", action="store_true", help="centre-crop a non-square input to its short side")
    cli.add_solver_arguments(p)
    return p


def _check_args(parser, args) -> None:
    cli.check_solver_arguments(parser, args)
    if args.factor <= 0:
        parser.error(f"--factor must be positive, got {args.factor}")
    if not math.isfinite(args.noise_sigma) or args.noise_sigma < 0:
        parser.error(f"--noise-sigma must be a finite number >= 0, got {args.noise_sigma}")
    if args.scale is not None and not (math.isfinite(args.scale) and args.scale >= 1):
        parser.error(f"--scale must be a finite factor >= 1, got {args.scale}")


def square_input(y: torch.Tensor, crop: bool) -> torch.Tensor:
    """The input as a square; a non-square one is refused unless ``crop`` (centre crop, with a note)."""
    h, w = y.shape[-2:]
    if h == w:
        return y
    side = min(h, w)
    if not crop:
        raise ValueError(f"the input is {h}x{w} (height x width) but the canvas of this model is square; pass "
                         f"--crop to centre-crop it to {side}x{side}, or pad it to a square yourself")
    top, left = (h - side) // 2, (w - side) // 2
    print(f"{PROG}: note: input centre-cropped from {h}x{w} to {side}x{side} (rows {top}-{top + side - 1}, "
          f"columns {left}-{left + side - 1}): the canvas is square", file=sys.stderr)
    return y[..., top : top + side, left : left + side]


def plot_compare(observed: torch.Tensor, ours_path: Path, path: Path, max_pixels: int = 768) -> Path:
    """Input (nearest), bicubic upsampling and ours; the second row zooms on the central quarter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with Image.open(ours_path) as im:
        ours = im.convert("RGB")
    side = ours.size[0]
    bicubic = to_pil(F.interpolate(observed, size=(side, side), mode="bicubic", align_corners=False).clamp(-1, 1)[0])
    nearest = to_pil(observed[0]).resize((side, side), Image.NEAREST)
    panels = [(f"input {observed.shape[-2]}x{observed.shape[-1]} (nearest)", nearest),
              (f"bicubic {side}x{side}", bicubic), (f"ours {side}x{side}", ours)]
    lo, hi = side * 3 // 8, side * 5 // 8  # central quarter of the side (1/16 of the area)
    fig, axes = plt.subplots(2, 3, figsize=(13.5, 9.4))
    for col, (title, image) in enumerate(panels):
        shown = image.copy()
        shown.thumbnail((max_pixels, max_pixels), Image.LANCZOS)
        axes[0, col].imshow(shown)
        axes[0, col].set_title(title, fontsize=10)
        zoom = image.crop((lo, lo, hi, hi))
        axes[1, col].imshow(zoom, interpolation="nearest")
        axes[1, col].set_title(f"zoom: pixels {lo}-{hi}", fontsize=9)
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    return path


def run(args) -> dict:
    source = Path(args.input)
    out, compare = cli.output_paths(source, args.out, "sr")
    model_path = cli.model_path(args.model)
    refuse_overwriting_inputs([out, compare], [source, model_path])

    y = square_input(load_image(source, "input"), args.crop)
    n = y.shape[-1]
    size = args.size if args.size is not None else round(args.scale * n)
    if not n <= size <= MAX_SIZE:
        raise ValueError(f"output size {size} must be between the input side {n} and {MAX_SIZE}")
    constraint = LowResObservation(y, FULL_CANVAS, noise_sigma=args.noise_sigma, operator=args.operator,
                                   factor=args.factor)

    model = cli.load_sampling_model(model_path, args.device)
    print(f"{source.name}: {n}x{n} -> {size}x{size} (x{size / n:.3g}), operator {args.operator}, "
          f"noise sigma {args.noise_sigma:g}, {args.steps} steps, seed {args.seed}")
    solver = cli.solver_from_arguments(model, args)
    result = solver.solve([constraint], seed=args.seed)
    written = result.save(out, (size, size), tile=args.tile)
    print(written[0])

    value = result.report()[constraint.name]["psnr"][0]
    print(f"measurement consistency: PSNR(result through the {args.operator} operator, input) = {value:.2f} dB "
          f"on the {n}x{n} input grid")
    written.append(plot_compare(constraint.observed, written[0], compare))
    print(written[-1])
    return {"written": written, "psnr": value, "size": size}


def main(argv: list[str] | None = None) -> dict:
    """Run the CLI; returns ``{"written", "psnr", "size"}``. Exit code 2 on bad input, 130 on Ctrl-C."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    with cli.user_errors(PROG):
        return run(args)


if __name__ == "__main__":
    main()
