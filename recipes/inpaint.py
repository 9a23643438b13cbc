"""Inpainting: fill the unknown part of an image by guided sampling (MaskedObservation), at any output size.

Usage::

    python recipes/inpaint.py photo.png --polygon "0.3,0.3 0.7,0.3 0.7,0.7 0.3,0.7" -o outputs/filled.png
    python recipes/inpaint.py photo.png --mask known.png -o outputs/filled.png
    python recipes/inpaint.py photo.png --mask hole.png --invert-mask -o outputs/filled.png --size 1024
    python recipes/inpaint.py tile.png --box 0.25 0.25 0.75 0.75 --polygon "0,0 1,0 1,0.25 0,0.25" -o out.png

``--polygon "x,y x,y ..."`` (canvas fractions, origin top left, y down) marks the region to *fill*; everything
else in the image is known. ``--mask`` is an image of the input's size where white = known, black = to fill (a
mask drawn the other way round, white = hole, needs ``--invert-mask``); grey levels are soft weights.
``--box x0 y0 x1 y1`` places the image on a part of the canvas (default: the whole canvas); the rest of the
canvas is then free. The output is the whole canvas, by default at the image's pixel density (``--size``
overrides).

Writes ``OUT`` and ``OUT_compare.png`` (input with the region to fill shaded, result), and prints the PSNR of the
result on the known pixels. Images with alpha, palettes, 16 bits or one channel are converted to RGB with a note.
Files are written atomically and an input is never overwritten; bad input ends with a one-line error and exit
code 2, Ctrl-C with 130.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

# infd_solve.models first: importing infd_solve.rendering before the models package is circular.
from infd_solve import cli
from infd_solve.constraint import load_image, load_mask
from infd_solve.constraints import MaskedObservation
from infd_solve.io import refuse_overwriting_inputs, to_pil, save_figure
from infd_solve.rendering import FULL_CANVAS, check_box

PROG = "inpaint.py"
MAX_SIZE = 32768


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", help="the image with a region to fill")
    region = p.add_mutually_exclusive_group(required=True)
    region.add_argument("--mask", help="mask image of the input's size: white = known, black = fill")
    region.add_argument("--polygon", help='region to fill, "x,y x,y x,y ..." in canvas fractions (write --polygon="-0.1,0 ..." when it '
                             'starts with a minus sign)')
    p.add_argument("--invert-mask", action="store_true", help="the --mask is white = fill, black = known")
    p.add_argument("-o", "--out", default=None, help="output image (default outputs/IMAGE_NAME_inpainted.png)")
    p.add_argument("--box", type=float, nargs=4, default=None, metavar=("X0", "Y0", "X1", "Y1"),
                   help="where the image lies on the canvas, in fractions (default: the whole canvas)")
    p.add_argument("--size", type=int, default=None, help="output canvas side (default: the image's pixel density)")
    cli.add_solver_arguments(p)
    return p


def _check_args(parser, args) -> None:
    cli.check_solver_arguments(parser, args)
    if args.size is not None and not 0 < args.size <= MAX_SIZE:
        parser.error(f"--size must be in 1..{MAX_SIZE}, got {args.size}")
    if args.invert_mask and args.mask is None:
        parser.error("--invert-mask only applies to --mask")


def parse_polygon(text: str) -> list[tuple[float, float]]:
    """``"x,y x,y ..."`` -> vertices (``ValueError`` naming the bad token)."""
    points = []
    for token in text.replace(";", " ").split():
        parts = token.split(",")
        try:
            x, y = (float(v) for v in parts)
        except ValueError:
            raise ValueError(f"--polygon: expected \"x,y x,y x,y ...\" in canvas fractions, got the token {token!r}"
                             ) from None
        points.append((x, y))
    if len(points) < 3:
        raise ValueError(f"--polygon needs at least three x,y vertices, got {len(points)} in {text!r}")
    return points


def known_region(args, box):
    """The ``mask`` argument of MaskedObservation: a mask tensor (1 = known) or the known polygon."""
    if args.mask is not None:
        m = load_mask(args.mask, "--mask")
        return 1 - m if args.invert_mask else m
    import shapely

    from infd_solve.regions import CANVAS, as_geometry

    hole = as_geometry(parse_polygon(args.polygon), "--polygon")
    if not hole.intersects(shapely.box(*box)) or hole.intersection(shapely.box(*box)).area <= 0:
        raise ValueError(f"--polygon {args.polygon!r} does not overlap the image's box {box}: nothing to fill")
    known = shapely.difference(CANVAS, hole)
    if known.area <= 0:
        raise ValueError("--polygon covers the whole canvas: no pixel would be known")
    return known


def plot_compare(constraint: MaskedObservation, result, ours_path: Path, path: Path, max_pixels: int = 768) -> Path:
    """Input with the region to fill shaded, the result on the image's box, and the whole canvas."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    observed, mask = constraint.observed[0], constraint.mask[0]
    shade = torch.tensor([1.0, -1.0, 1.0]).view(3, 1, 1)  # magenta where unknown
    shown_input = observed * mask + (0.35 * observed + 0.65 * shade) * (1 - mask)
    with torch.no_grad():
        on_box = result.model.render(result.field, constraint.size, constraint.box)[0].cpu()
    panels = [("input (magenta: to fill)", to_pil(shown_input)), ("result on the image's box", to_pil(on_box))]
    if tuple(constraint.box) != FULL_CANVAS:
        with Image.open(ours_path) as im:
            panels.append((f"result: whole canvas {im.size[1]}x{im.size[0]}", im.convert("RGB")))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 5.2), squeeze=False)
    for k, (ax, (title, image)) in enumerate(zip(axes[0], panels)):
        image = image.copy()
        image.thumbnail((max_pixels, max_pixels), Image.LANCZOS)
        ax.imshow(image, extent=(0, 1, 1, 0))
        if k == 2:  # where the image lies on the canvas
            left, top, right, bottom = constraint.box
            ax.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, edgecolor="magenta",
                                   linestyle="--", linewidth=1.5))
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    return path


def run(args) -> dict:
    source = Path(args.image)
    out, compare = cli.output_paths(source, args.out, "inpainted")
    model_path = cli.model_path(args.model)
    refuse_overwriting_inputs([out, compare], [source, model_path, args.mask])

    box = check_box(args.box, "--box") if args.box is not None else FULL_CANVAS
    y = load_image(source, "image")
    constraint = MaskedObservation(y, mask=known_region(args, box), box=box)
    h, w = constraint.size
    canvas = (args.size, args.size) if args.size else (round(h / (box[3] - box[1])), round(w / (box[2] - box[0])))
    if max(canvas) > MAX_SIZE:
        raise ValueError(f"the canvas would be {canvas[0]}x{canvas[1]}; pass a smaller --size")
    known = float(constraint.mask.mean())
    if known >= 1.0:
        print(f"{PROG}: note: every pixel of the image is known (nothing to fill)", file=sys.stderr)

    model = cli.load_sampling_model(model_path, args.device)
    print(f"{source.name}: {h}x{w} on box {tuple(round(v, 4) for v in box)}, {known:.1%} known, output "
          f"{canvas[0]}x{canvas[1]}, {args.steps} steps, seed {args.seed}")
    solver = cli.solver_from_arguments(model, args)
    result = solver.solve([constraint], seed=args.seed)
    written = result.save(out, canvas, tile=args.tile)
    print(written[0])

    value = result.report()[constraint.name]["psnr"][0]
    print(f"known-region PSNR: {value:.2f} dB over {int((constraint.mask >= 0.5).sum())} known pixels")
    written.append(plot_compare(constraint, result, written[0], compare))
    print(written[-1])
    return {"written": written, "psnr": value, "canvas": canvas, "known_fraction": known}


def main(argv: list[str] | None = None) -> dict:
    """Run the CLI; returns ``{"written", "psnr", "canvas", "known_fraction"}``. Exit 2 on bad input, 130 on Ctrl-C."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    with cli.user_errors(PROG):
        return run(args)


if __name__ == "__main__":
    main()
