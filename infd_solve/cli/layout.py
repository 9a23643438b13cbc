"""``infd-layout``: prompts, colours and observations placed on the canvas, solved by guided sampling.

Usage::

    infd-layout recipes/examples/quick_512.json -o outputs/quick.png
    infd-layout recipes/examples/landscape_2048.json -o outputs/landscape.png --steps 100
    infd-layout my_layout.json -o out.png --model my_model_dir --clip my_clip_dir --canvas 1024
    infd-layout bright_layout.json -o out.png --import my_constraints.py

The layout is a JSON file (format: :mod:`infd_solve.layout`; boxes ``[x0, y0, x1, y1]`` in canvas fractions,
origin top left). ``--seed``, ``--canvas``, ``--batch-size`` and the solver options (``--sampler``,
``--steps``, ``--guidance-scale``, ``--eta``, ``--refine-steps``, ``--option KEY=VALUE``) override the layout's
values. An item type of your own (a ``Constraint`` subclass with a
``layout_type``) is found by ``--import MODULE_OR_FILE`` (repeatable), or with no option when its package
declares it as an ``infd_solve.constraints`` entry point (see :mod:`infd_solve.layout`). Writes:

* ``OUT`` (``OUT_0``, ``OUT_1``, ... for a batch): the image at the canvas size, rendered in tiles (``--tile``);
* ``OUT_layout.png``: the layout drawn over the result (boxes and polygons labelled with prompts / colours);
* ``OUT_losses.png``: each constraint's loss over the sampling steps.

Prints each constraint's measures on the result (:meth:`infd_solve.Result.report`: loss, and the CLIP
similarity of CLIP items or the PSNR of observations). Files are written atomically; inputs (layout, model,
CLIP, images) are never overwritten. A bad layout (the message names the item and field), a missing model or
file ends with a one-line error and exit code 2; a constraint that never guided (its loss or gradient never
finite) with exit code 3, after writing the outputs; Ctrl-C with exit code 130.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import (add_import_argument, add_solver_arguments, exit_status, given_options, guidance_failures,
               import_user_modules, load_sampling_model, model_path, new_parser, options_summary, output_path, plural,
               print_notes, resolve_device, run_command)

PROG = "infd-layout"


def build_parser(prog: str = PROG):
    p = new_parser(prog, __doc__)
    p.add_argument("layout", help="layout JSON file")
    p.add_argument("-o", "--out", default=None, help="output image (default outputs/LAYOUT_NAME.png)")
    p.add_argument("--model", default="default",
                   help='"default" (the shipped model), a directory saved by INFDModel.save, or an official .pth')
    p.add_argument("--clip", default="default",
                   help='CLIP for "clip" items: "default" (the shipped domain CLIP) or an open_clip directory')
    p.add_argument("--seed", type=int, default=None, help="override the layout's seed (sample i uses seed + i)")
    p.add_argument("--canvas", type=int, nargs="+", default=None, metavar="S",
                   help="override the canvas size: S (square) or H W")
    p.add_argument("--batch-size", type=int, default=None, help="override the layout's batch size")
    p.add_argument("--tile", type=int, default=256, help="render tile size for the final image (default 256)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_solver_arguments(p, overrides=True)
    add_import_argument(p)
    return p


def _overrides(parser, args, obj: dict) -> dict:
    obj = dict(obj)
    if args.canvas is not None:
        if len(args.canvas) not in (1, 2):
            parser.error(f"--canvas takes S or H W, got {len(args.canvas)} numbers")
        obj["canvas"] = args.canvas[0] if len(args.canvas) == 1 else list(args.canvas)
    for key in ("seed", "batch_size"):
        if getattr(args, key) is not None:
            obj[key] = getattr(args, key)
    return obj | given_options(args)


def _print_report(result) -> dict:
    report = result.report()
    print("final measures on the result (per sample):")
    width = max(len(c.name) for c in result.constraints)
    for i, c in enumerate(result.constraints):
        box = ", ".join(f"{v:.3f}" for v in c.box)
        measures = "  ".join(f"{k} " + " ".join(f"{v:.4g}" for v in values) for k, values in report[c.name].items())
        print(f"  [{i}] {c.name:<{width}}  box=({box})  weight {c.weight:g}  {measures}")
    return report


def run(parser, args) -> dict:
    from ..io import refuse_overwriting_inputs
    from ..layout import parse_layout, read_layout
    from ..solver import Solver
    from ..viz import plot_layout

    if args.tile <= 0:
        parser.error(f"--tile must be positive, got {args.tile}")
    layout_path = Path(args.layout)
    import_user_modules(args.imports)  # first: they may define the sampler family the options name
    obj = _overrides(parser, args, read_layout(layout_path))
    model_file = model_path(args.model)  # a missing shipped model fails here, before any work
    device = resolve_device(args.device)
    settings, constraints = parse_layout(obj, clip=args.clip, base_dir=layout_path.resolve().parent, device=device)

    out = output_path(args.out or Path("outputs") / f"{layout_path.stem}.png")
    images = [out] if settings.batch_size == 1 else \
        [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(settings.batch_size)]
    overlay, losses = out.with_name(f"{out.stem}_layout.png"), out.with_name(f"{out.stem}_losses.png")
    inputs = [layout_path, model_file, None if args.clip == "default" else Path(args.clip)]
    inputs += [path for c in constraints for path in c.input_files]
    refuse_overwriting_inputs([*images, overlay, losses], inputs)

    model = load_sampling_model(model_file, device)
    h, w = settings.canvas
    print(f"{layout_path.name}: {plural(len(constraints), 'constraint')}, canvas {h}x{w}, "
          f"{options_summary(settings.solver_kwargs(), constraints)}, seed {settings.seed}, "
          f"batch {settings.batch_size}")
    solver = Solver(model, **settings.solver_kwargs(), progress=not args.no_progress)
    result = solver.solve(constraints, batch_size=settings.batch_size, seed=settings.seed)

    written = result.save(out, settings.canvas, tile=args.tile)
    for p in written:
        print(p)
    report = {"measures": _print_report(result)}
    print_notes(result, args.prog)
    written.append(plot_layout(written[: settings.batch_size], settings.canvas, constraints, overlay))
    print(written[-1])
    written.append(result.plot_losses(losses))
    print(written[-1])
    report["written"] = written
    guidance_failures(result, args.prog)
    return report


def run_layout(argv: list[str] | None = None, prog: str = PROG) -> dict:
    """The command in-process: returns ``{"written", "measures"}`` (``measures``: :meth:`Result.report`); ends
    with ``SystemExit`` (after its one-line error) where the program exits non-zero: 2 bad input, 3 never
    guided (outputs written), 130 Ctrl-C."""
    return run_command(build_parser, run, argv, prog)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """The ``infd-layout`` program: returns its exit status (0 done, 2 bad input, 3 never guided, 130 Ctrl-C)."""
    return exit_status(run_layout, argv, prog)


if __name__ == "__main__":
    sys.exit(main())
