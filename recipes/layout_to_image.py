"""Layout to image: prompts, colours and observations placed on the canvas, solved by guided sampling.

Usage::

    python recipes/layout_to_image.py recipes/examples/quick_512.json -o outputs/quick.png
    python recipes/layout_to_image.py recipes/examples/landscape_2048.json -o outputs/landscape.png --steps 100
    python recipes/layout_to_image.py my_layout.json -o out.png --model my_model_dir --clip my_clip_dir --canvas 1024

The layout is a JSON file (format: ``infd_solve.layout``; boxes ``[x0, y0, x1, y1]`` in canvas fractions, origin
top left). ``--steps``, ``--seed``, ``--canvas``, ``--scale``, ``--guidance`` and ``--batch-size`` override the
layout's values. Writes:

* ``OUT`` (``OUT_0``, ``OUT_1``, ... for a batch): the image at the canvas size, rendered in tiles (``--tile``);
* ``OUT_layout.png``: the layout drawn over the result (boxes and polygons labelled with prompts / colours);
* ``OUT_losses.png``: each constraint's loss over the sampling steps.

Prints each constraint's final loss on the result and, for CLIP items, the CLIP similarity of the final box
render to the prompt. Files are written atomically; inputs (layout, model, CLIP, images) are never overwritten.
A bad layout (the message names the item and field), a missing model or file ends with a one-line error and
exit code 2; Ctrl-C with exit code 130.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

# infd_solve.models first: importing infd_solve.rendering before the models package is circular.
from infd_solve import cli
from infd_solve.io import refuse_overwriting_inputs, save_figure
from infd_solve.layout import item_label, parse_layout, read_layout
from infd_solve.solver import Solver

PROG = "layout_to_image.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("layout", help="layout JSON file")
    p.add_argument("-o", "--out", default=None, help="output image (default outputs/LAYOUT_NAME.png)")
    p.add_argument("--model", default="default",
                   help='"default" (the shipped model), a directory saved by INFDModel.save, or an official .pth')
    p.add_argument("--clip", default="default",
                   help='CLIP for "clip" items: "default" (the shipped domain CLIP) or an open_clip directory')
    p.add_argument("--steps", type=int, default=None, help="override the layout's DDIM steps")
    p.add_argument("--seed", type=int, default=None, help="override the layout's seed (sample i uses seed + i)")
    p.add_argument("--canvas", type=int, nargs="+", default=None, metavar="S",
                   help="override the canvas size: S (square) or H W")
    p.add_argument("--scale", type=float, default=None, help="override the layout's guidance scale")
    p.add_argument("--guidance", choices=("dps", "x0"), default=None, help="override the layout's guidance mode")
    p.add_argument("--batch-size", type=int, default=None, help="override the layout's batch size")
    p.add_argument("--tile", type=int, default=256, help="render tile size for the final image (default 256)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _clip_path(name_or_path: str) -> Path | None:
    from infd_solve import pretrained

    if name_or_path in pretrained.NAMES:
        return None  # shipped; load_clip reports it if missing
    return Path(name_or_path)


def _overrides(parser, args, obj: dict) -> dict:
    obj = dict(obj)
    if args.canvas is not None:
        if len(args.canvas) not in (1, 2):
            parser.error(f"--canvas takes S or H W, got {len(args.canvas)} numbers")
        obj["canvas"] = args.canvas[0] if len(args.canvas) == 1 else list(args.canvas)
    for key in ("steps", "seed", "scale", "guidance", "batch_size"):
        if getattr(args, key) is not None:
            obj[key] = getattr(args, key)
    return obj


def outputs_for(out: Path, batch: int) -> tuple[list[Path], Path, Path]:
    images = [out] if batch == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(batch)]
    return images, out.with_name(f"{out.stem}_layout.png"), out.with_name(f"{out.stem}_losses.png")


def final_report(result) -> dict:
    """Print and return each constraint's measures on the result (:meth:`Result.report`), per sample."""
    report = result.report()
    print("final measures on the result (per sample):")
    width = max(len(c.name) for c in result.constraints)
    for i, c in enumerate(result.constraints):
        box = ", ".join(f"{v:.3f}" for v in c.box)
        measures = "  ".join(f"{k} " + " ".join(f"{v:.4g}" for v in values) for k, values in report[c.name].items())
        print(f"  [{i}] {c.name:<{width}}  box=({box})  weight {c.weight:g}  {measures}")
    return report


_PALETTE = ("#e6194b", "#3cb44b", "#9a6324", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c")


def _draw_geometry(ax, geometry, **style):
    from matplotlib.patches import Polygon as MplPolygon

    for g in getattr(geometry, "geoms", [geometry]):
        if hasattr(g, "exterior"):
            ax.add_patch(MplPolygon(list(g.exterior.coords), closed=True, **style))


def plot_layout(image_paths: list[Path], settings, constraints, path: Path, max_pixels: int = 1024) -> Path:
    """The layout drawn over each result image (axes in canvas fractions, y down), as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from infd_solve.constraints.color_match import parse_color

    h, w = settings.canvas
    n = len(image_paths)
    panel = 8.0
    fig, axes = plt.subplots(1, n, figsize=(panel * n, panel * h / w + 0.6), squeeze=False)
    for ax, image_path in zip(axes[0], image_paths):
        with Image.open(image_path) as im:
            im = im.convert("RGB")
            im.thumbnail((max_pixels, max_pixels), Image.LANCZOS)
            ax.imshow(im, extent=(0, 1, 1, 0), interpolation="lanczos")
        for k, (item, c) in enumerate(zip(settings.items, constraints)):
            colour = _PALETTE[k % len(_PALETTE)]
            dashed = item["type"] in ("observation", "lowres", "perceptual")
            style = {"fill": False, "edgecolor": colour, "linewidth": 2.0, "linestyle": "--" if dashed else "-"}
            if "geometry" in item:
                _draw_geometry(ax, item["geometry"], **style)
                ax.add_patch(Rectangle(c.box[:2], c.box[2] - c.box[0], c.box[3] - c.box[1], fill=False,
                                       edgecolor=colour, linewidth=0.8, linestyle=":"))
            else:
                ax.add_patch(Rectangle(c.box[:2], c.box[2] - c.box[0], c.box[3] - c.box[1], **style))
            face = (1.0, 1.0, 1.0)  # a colour item's label sits on its target colour
            if item["type"] == "color":
                face = tuple(float(v) for v in (parse_color(item["color"]) + 1) / 2)
            luminance = 0.299 * face[0] + 0.587 * face[1] + 0.114 * face[2]
            label = f"{k}: {item_label(item)}" + (f" (w={c.weight:g})" if c.weight != 1 else "")
            ax.text(c.box[0] + 0.005, c.box[1] + 0.005, label, fontsize=9, va="top", ha="left",
                    color="black" if luminance > 0.5 else "white",
                    bbox={"facecolor": face, "edgecolor": colour, "alpha": 0.85, "boxstyle": "round,pad=0.2"})
        ax.set_xlim(0, 1)
        ax.set_ylim(1, 0)
        ax.set_aspect(h / w)
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1])
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1])
        ax.tick_params(labelsize=7)
        ax.set_title(f"{image_path.name}  ({h}x{w})", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    return path


def run(parser, args) -> dict:
    layout_path = Path(args.layout)
    obj = _overrides(parser, args, read_layout(layout_path))
    if args.tile <= 0:
        parser.error(f"--tile must be positive, got {args.tile}")
    model_path = cli.model_path(args.model)  # a missing shipped model fails here, before any work
    device = cli.resolve_device(args.device)
    settings, constraints = parse_layout(obj, clip=args.clip, base_dir=layout_path.resolve().parent,
                                         device=device)

    out = Path(args.out) if args.out else Path("outputs") / f"{layout_path.stem}.png"
    if out.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"output {out}: unknown image extension {out.suffix!r}; use .png")
    images, overlay, losses = outputs_for(out, settings.batch_size)
    inputs = [layout_path, model_path, _clip_path(args.clip)]
    inputs += [item[k] for item in settings.items for k in ("image", "mask") if isinstance(item.get(k), Path)]
    refuse_overwriting_inputs([*images, overlay, losses], inputs)

    model = cli.load_sampling_model(model_path, device)
    h, w = settings.canvas
    print(f"{layout_path.name}: {len(constraints)} constraints, canvas {h}x{w}, {settings.steps} steps "
          f"({settings.guidance}, scale {settings.scale:g}), seed {settings.seed}, batch {settings.batch_size}")
    solver = Solver(model, **settings.solver_kwargs(), progress=not args.no_progress)
    result = solver.solve(constraints, batch_size=settings.batch_size, seed=settings.seed)

    written = result.save(out, settings.canvas, tile=args.tile)
    for p in written:
        print(p)
    report = {"measures": final_report(result)}
    written.append(plot_layout(written[: settings.batch_size], settings, constraints, overlay))
    print(written[-1])
    written.append(result.plot_losses(losses))
    print(written[-1])
    report["written"] = written
    return report


def main(argv: list[str] | None = None) -> dict:
    """Run the CLI; returns ``{"written", "measures"}`` (``measures``: :meth:`Result.report`). Exit code 2 on bad
    input, 130 on Ctrl-C."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with cli.user_errors(PROG):
        return run(parser, args)


if __name__ == "__main__":
    main()
