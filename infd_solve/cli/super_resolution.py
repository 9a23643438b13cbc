"""``infd-sr``: super-resolution at any size: the canvas must explain a low-resolution image.

Usage::

    infd-sr small.png --size 2048 -o outputs/big.png
    infd-sr small.png --upscale 8 -o outputs/big.png --operator render --noise-sigma 0.02
    infd-sr wide.png --upscale 4 --crop -o outputs/big.png

The field is sampled by guided DDIM (:class:`~infd_solve.constraints.LowResObservation`) so that the canvas,
seen through ``--operator``, reproduces the input: ``render`` renders the field directly on the input's pixel
grid (any, non-integer factor), ``area`` / ``bicubic`` render at ``--factor`` x the input size (default: as
much as the constraint's grid allows) and average / bicubic-downsample. ``--noise-sigma`` is the observation
noise in [-1, 1] units (8-bit noise of s levels is s / 127.5). The result is rendered at ``--size`` (or
``--upscale`` x the input side) in tiles.

Writes ``OUT`` and ``OUT_compare.png`` (input, bicubic upsampling and ours, with a zoom on the centre), and
prints the measurement consistency: the result seen through the same operator vs the input, as PSNR.

The canvas of an INFD model is square: a non-square input is refused unless ``--crop`` centre-crops it to its
short side (a note says so). Images with alpha, palettes, 16 bits or one channel are converted to RGB with a
note. Files are written atomically and an input is never overwritten; bad input ends with a one-line error and
exit code 2, Ctrl-C with 130.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from . import (add_run_arguments, options_summary, check_solver_arguments, exit_status, guidance_failures,
               load_sampling_model, new_parser, observation_outputs, run_command, solve_observation)

PROG = "infd-sr"


def build_parser(prog: str = PROG):
    from ..constraints.lowres_observation import OPERATORS

    p = new_parser(prog, __doc__)
    p.add_argument("input", help="low-resolution image (square, or use --crop)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--size", type=int, help="output side in pixels (the canvas is square)")
    target.add_argument("--upscale", type=float, help="output side = upscale x input side (any factor >= 1)")
    p.add_argument("-o", "--out", default=None, help="output image (default outputs/INPUT_NAME_sr.png)")
    p.add_argument("--operator", choices=OPERATORS, default="area",
                   help="how the canvas becomes the input: area average (default), bicubic, or render on its grid")
    p.add_argument("--factor", type=int, default=None,
                   help="area/bicubic: render at factor x the input size before downsampling (default: as "
                        "much as the guidance grid allows, at most 4)")
    p.add_argument("--noise-sigma", type=float, default=0.0,
                   help="observation noise std in [-1, 1] units (default 0)")
    p.add_argument("--crop", action="store_true", help="centre-crop a non-square input to its short side")
    add_run_arguments(p)
    return p


def _check_args(parser, args) -> None:
    check_solver_arguments(parser, args)
    if args.factor is not None and args.factor <= 0:
        parser.error(f"--factor must be positive, got {args.factor}")
    if not math.isfinite(args.noise_sigma) or args.noise_sigma < 0:
        parser.error(f"--noise-sigma must be a finite number >= 0, got {args.noise_sigma}")
    if args.upscale is not None and not (math.isfinite(args.upscale) and args.upscale >= 1):
        parser.error(f"--upscale must be a finite factor >= 1, got {args.upscale}")


def run(parser, args) -> dict:
    _check_args(parser, args)
    from ..constraints import LowResObservation
    from ..io import center_square, load_image
    from ..rendering import MAX_CANVAS
    from ..viz import plot_super_resolution

    source = Path(args.input)
    args.out_path, compare, model_file = observation_outputs(args, source, "sr")

    y = load_image(source, "input")
    h, w = y.shape[-2:]
    if h != w:
        if not args.crop:
            raise ValueError(f"the input is {h}x{w} (height x width) but the canvas of this model is square; pass "
                             f"--crop to centre-crop it to {min(h, w)}x{min(h, w)}, or pad it to a square yourself")
        y, (top, left) = center_square(y)
        side = y.shape[-1]
        print(f"{args.prog}: note: input centre-cropped from {h}x{w} to {side}x{side} (rows {top}-{top + side - 1}"
              f", columns {left}-{left + side - 1}): the canvas is square", file=sys.stderr)
    n = y.shape[-1]
    size = args.size if args.size is not None else round(args.upscale * n)
    if not n <= size <= MAX_CANVAS:
        raise ValueError(f"output size {size} must be between the input side {n} and {MAX_CANVAS}")
    constraint = LowResObservation(y, noise_sigma=args.noise_sigma, operator=args.operator, factor=args.factor,
                                   trust=args.trust)
    model = load_sampling_model(model_file, args.device)  # the model and --device are checked before any output

    print(f"{source.name}: {n}x{n} -> {size}x{size} (x{size / n:.3g}), operator {args.operator}, "
          f"noise sigma {args.noise_sigma:g}, {options_summary(args.solver_options, [constraint])}, seed {args.seed}")
    result, written, scores = solve_observation(args, model, constraint, (size, size))
    print(f"measurement consistency: PSNR(result through the {args.operator} operator, input) = "
          f"{scores['psnr']:.2f} dB on the {n}x{n} input grid")
    written.append(plot_super_resolution(y, written[0], compare))
    print(written[-1])
    guidance_failures(result, args.prog)
    return {"written": written, "psnr": scores["psnr"], "model_fit": scores.get("model_fit"), "size": size}


def run_super_resolution(argv: list[str] | None = None, prog: str = PROG) -> dict:
    """The command in-process: returns ``{"written", "psnr", "size"}``; ends with ``SystemExit`` (after its
    one-line error) where the program exits non-zero: 2 bad input, 3 never guided (outputs written), 130 Ctrl-C."""
    return run_command(build_parser, run, argv, prog)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """The ``infd-sr`` program: returns its exit status (0 done, 2 bad input, 3 never guided, 130 Ctrl-C)."""
    return exit_status(run_super_resolution, argv, prog)


if __name__ == "__main__":
    sys.exit(main())
