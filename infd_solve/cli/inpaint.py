"""``infd-inpaint``: fill the unknown part of an image by guided sampling (MaskedObservation), at any size.

Usage::

    infd-inpaint photo.png --polygon "0.3,0.3 0.7,0.3 0.7,0.7 0.3,0.7" -o outputs/filled.png
    infd-inpaint photo.png --mask known.png -o outputs/filled.png
    infd-inpaint photo.png --mask hole.png --invert-mask -o outputs/filled.png --size 1024
    infd-inpaint tile.png --box 0.25 0.25 0.75 0.75 --polygon "0,0 1,0 1,0.25 0,0.25" -o out.png

``--polygon "x,y x,y ..."`` (canvas fractions, origin top left, y down) marks the region to *fill*; everything
else in the image is known. ``--mask`` is an image of the input's size where white = known, black = to fill (a
mask drawn the other way round, white = hole, needs ``--invert-mask``); grey levels are soft weights.
``--trust 1`` keeps the model's own fill throughout the hole; by default it fades into a smooth (harmonic) fill
deep inside a large hole, where the model's fill is a guess. ``--box x0 y0 x1 y1`` places the image on a part
of the canvas (default: the whole canvas); the rest of the canvas is then free. The output is the whole canvas,
by default at the image's pixel density (``--size`` overrides).

Writes ``OUT`` and ``OUT_compare.png`` (input with the region to fill shaded, result), and prints the PSNR of the
result on the known pixels. Images with alpha, palettes, 16 bits or one channel are converted to RGB with a note.
Files are written atomically and an input is never overwritten; bad input ends with a one-line error and exit
code 2, Ctrl-C with 130.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import (add_run_arguments, options_summary, check_solver_arguments, exit_status, guidance_failures,
               load_sampling_model, new_parser, observation_outputs, run_command, solve_observation)

PROG = "infd-inpaint"


def build_parser(prog: str = PROG):
    p = new_parser(prog, __doc__)
    region = p.add_mutually_exclusive_group(required=True)
    region.add_argument("--mask", help="mask image of the input's size: white = known, black = fill")
    region.add_argument("--polygon", help='region to fill, "x,y x,y x,y ..." in canvas fractions (write '
                                          '--polygon="-0.1,0 ..." when it starts with a minus sign)')
    p.add_argument("image", help="the image with a region to fill")
    p.add_argument("--invert-mask", action="store_true", help="the --mask is white = fill, black = known")
    p.add_argument("-o", "--out", default=None, help="output image (default outputs/IMAGE_NAME_inpainted.png)")
    p.add_argument("--box", type=float, nargs=4, default=None, metavar=("X0", "Y0", "X1", "Y1"),
                   help="where the image lies on the canvas, in fractions (default: the whole canvas)")
    p.add_argument("--size", type=int, default=None, help="output canvas side (default: the image's pixel density)")
    add_run_arguments(p)
    return p


def _check_args(parser, args) -> None:
    from ..rendering import MAX_CANVAS

    check_solver_arguments(parser, args)
    if args.size is not None and not 0 < args.size <= MAX_CANVAS:
        parser.error(f"--size must be in 1..{MAX_CANVAS}, got {args.size}")
    if args.invert_mask and args.mask is None:
        parser.error("--invert-mask only applies to --mask")


def run(parser, args) -> dict:
    _check_args(parser, args)
    import torch

    from ..constraints import MaskedObservation
    from ..io import load_image, load_mask
    from ..regions import known_outside, parse_points
    from ..rendering import FULL_CANVAS, MAX_CANVAS, check_box
    from ..viz import plot_inpainting

    source = Path(args.image)
    args.out_path, compare, model_file = observation_outputs(args, source, "inpainted", [args.mask])

    box = check_box(args.box, "--box") if args.box is not None else FULL_CANVAS
    if args.mask is not None:
        mask = load_mask(args.mask, "--mask")
        mask = 1 - mask if args.invert_mask else mask
    else:
        mask = known_outside(parse_points(args.polygon, "--polygon"), box, "--polygon")
    constraint = MaskedObservation(load_image(source, "image"), mask=mask, box=box, trust=args.trust)
    h, w = constraint.score_size
    canvas = (args.size, args.size) if args.size else (round(h / (box[3] - box[1])), round(w / (box[2] - box[0])))
    if max(canvas) > MAX_CANVAS:
        raise ValueError(f"the canvas would be {canvas[0]}x{canvas[1]}; pass a smaller --size")
    known = float(constraint.image_mask.mean())
    model = load_sampling_model(model_file, args.device)  # the model and --device are checked before any output
    if known >= 1.0:
        print(f"{args.prog}: note: every pixel of the image is known (nothing to fill)", file=sys.stderr)

    print(f"{source.name}: {h}x{w} on box {tuple(round(v, 4) for v in box)}, {known:.1%} known, output "
          f"{canvas[0]}x{canvas[1]}, {options_summary(args.solver_options, [constraint])}, seed {args.seed}")
    result, written, scores = solve_observation(args, model, constraint, canvas)
    print(f"known-region PSNR: {scores['psnr']:.2f} dB over {int((constraint.image_mask >= 0.5).sum())} known pixels")
    with torch.no_grad():
        on_box = result.render(constraint.score_size, constraint.box)
    whole = written[0] if tuple(box) != FULL_CANVAS else None
    written.append(plot_inpainting(constraint.image, constraint.image_mask, on_box, compare, whole, box))
    print(written[-1])
    guidance_failures(result, args.prog)
    return {"written": written, "psnr": scores["psnr"], "model_fit": scores.get("model_fit"),
            "trust": scores.get("trust"), "canvas": canvas, "known_fraction": known}


def run_inpaint(argv: list[str] | None = None, prog: str = PROG) -> dict:
    """The command in-process: returns ``{"written", "psnr", "model_fit", "trust", "canvas", "known_fraction"}``;
    ends with ``SystemExit`` (after its one-line error) where the program exits non-zero: 2 bad input, 3 never
    guided (outputs written), 130 Ctrl-C."""
    return run_command(build_parser, run, argv, prog)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """The ``infd-inpaint`` program: returns its exit status (0 done, 2 bad input, 3 never guided, 130 Ctrl-C)."""
    return exit_status(run_inpaint, argv, prog)


if __name__ == "__main__":
    sys.exit(main())
