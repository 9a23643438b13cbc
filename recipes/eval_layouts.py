"""Are layouts followed? Judged by the independent segmentation judge, not by the CLIP that guides them.

    python recipes/eval_layouts.py --threads 1                  # writes outputs/eval_layouts.{json,md,png}
    python recipes/eval_layouts.py --seeds 0 1 2 3 4 --steps 50
    python recipes/eval_layouts.py --item cutouts=0 --item margin=null --out outputs/eval_layouts_plain

Layouts: the README's example (``recipes/examples/landscape_2048.json``) and ``lake_forest``, ``corner_clouds``
and ``peak_meadow`` from ``recipes/examples/`` (or ``--layouts``), each solved on ``--canvas`` (256) with
``--steps`` (25) for each of ``--seeds`` (0-2), with its guidance and without (the same seeds, so the same
noise). ``--item KEY=JSON`` sets a field of every "clip" item (e.g. ``cutouts=8``, ``active=[0,600]``,
``margin=null``), to compare guidance settings.

Each "clip" item's prompt names the labels it asks for (``infd_solve.judge.PROMPT_LABELS``: "a lake" -> water, "snowy
mountains" -> snow or mountain, ...). The judge (``infd_solve.judge``, trained on the landscapes' per-pixel
labels, never used for guidance) segments the whole canvas; per item:

- ``in box``: the share of the item's region (the polygon itself for polygon items) labelled as asked,
  guided vs unguided; guidance wins when it is higher;
- ``leakage``: the share of the canvas outside the regions asking for that label that is labelled as
  asked, guided minus unguided (guidance that spills over the rest of the scene);
- ``mirror``: the same share inside the box mirrored left-right, guided vs unguided (when it does not
  overlap the box);
- ``CLIP``: the guiding CLIP's similarity of the item (``ClipBox.similarity``), guided vs unguided; CLIP and
  judge agree when both say guidance made it better, or both say worse. Disagreement with CLIP saying better
  is CLIP being fooled.

Item values are means over the seeds. Summary: share of items where guidance wins, mean share in the box
(guided and unguided), mean leakage, share of items where CLIP and judge agree (also per item and seed).
Writes ``OUT.json``, ``OUT.md`` (the tables) and ``OUT.png`` (per layout: guided and unguided results of the
first seed with the layout drawn over them, and the judge's label maps; the overlays also full size in
``OUT_layouts/``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import infd_solve
from infd_solve.cli import parse_assignments
from infd_solve.clip import load_clip
from infd_solve.io import atomic_path
from infd_solve.judge import (judge_layout_items, label_colours, layout_items_markdown, load_judge,
                              summarize_layout_items, target_labels)
from infd_solve.layout import parse_layout, read_layout

EXAMPLES = Path(__file__).parent / "examples"
LAYOUTS = [EXAMPLES / f"{name}.json" for name in ("landscape_2048", "lake_forest", "corner_clouds", "peak_meadow")]
def solve(model, constraints, seeds, steps, options):
    """One result per seed, batched when the seeds are consecutive (sample i uses seed + i)."""
    solver = infd_solve.Solver(model, steps=steps, progress=False, **options)
    if list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return solver.solve(constraints, batch_size=len(seeds), seed=seeds[0])
    raise SystemExit("--seeds must be consecutive integers (sample i of a batch uses seed + i)")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layouts", type=Path, nargs="+", default=LAYOUTS, help="layout files (default: the four above)")
    p.add_argument("--canvas", type=int, default=256, help="canvas side the judge sees (default 256)")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="consecutive seeds (default 0 1 2)")
    p.add_argument("--scale", type=float, default=1.0, help="the solver's guidance scale (default 1)")
    p.add_argument("--solver", action="append", default=[], metavar="KEY=JSON",
                   help="set a Solver option (repeatable), e.g. keep_outside=false")
    p.add_argument("--item", action="append", default=[], metavar="KEY=JSON",
                   help="set a field of every clip item (repeatable), e.g. cutouts=8")
    p.add_argument("--model", default="default")
    p.add_argument("--clip", default="default")
    p.add_argument("--judge", default="default")
    p.add_argument("--out", type=Path, default=Path("outputs/eval_layouts"))
    p.add_argument("--no-figure", action="store_true", help="tables only")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    overrides = parse_assignments(args.item, "--item")
    options = {"guidance_scale": args.scale} | parse_assignments(args.solver, "--solver")
    model = infd_solve.load_model(args.model)
    clip = load_clip(args.clip)
    judge = load_judge(args.judge)
    canvas = (args.canvas, args.canvas)
    seeds = args.seeds

    unguided = solve(model, [], seeds, args.steps, options)
    with torch.no_grad():
        unguided_images = unguided.render(canvas)
    unguided_labels = judge.segment(unguided_images)

    items, figure_rows, solve_seconds = [], [], {}
    for path in args.layouts:
        layout = read_layout(path)
        layout["items"] = [item | overrides if item.get("type") == "clip" else item for item in layout["items"]]
        _, constraints = parse_layout(layout | {"canvas": args.canvas}, clip=clip, base_dir=path.parent)
        try:  # before solving: every prompt must name labels the judge can look for
            [target_labels(c.prompt) for c in constraints if hasattr(c, "prompt")]
        except ValueError as e:
            raise SystemExit(f"{path}: {e}") from None
        t0 = time.time()
        result = solve(model, constraints, seeds, args.steps, options)
        solve_seconds[path.stem] = round(time.time() - t0, 1)
        with torch.no_grad():
            images = result.render(canvas)
        labels = judge.segment(images)
        guided_rows = judge_layout_items(judge, labels, constraints, canvas)
        plain_rows = judge_layout_items(judge, unguided_labels, constraints, canvas)
        for c, g, u in zip([c for c in constraints if hasattr(c, "prompt")], guided_rows, plain_rows):
            with torch.no_grad():
                clip_g = c.similarity(result.render(c.size, c.box)).tolist()
                clip_u = c.similarity(unguided.render(c.size, c.box)).tolist()
            item = {"layout": path.stem, "prompt": c.prompt, "labels": list(g["labels"]),
                    "region": "polygon" if c.geometry is not None else [round(v, 3) for v in c.box],
                    "judge_guided": g["in"], "judge_unguided": u["in"],
                    "outside_guided": g["outside"], "outside_unguided": u["outside"],
                    "clip_guided": clip_g, "clip_unguided": clip_u}
            if "mirror" in g:
                item |= {"mirror_guided": g["mirror"], "mirror_unguided": u["mirror"]}
            items.append(item)
        if not args.no_figure:
            figure_rows.append((path, constraints, images[0], labels[0], unguided_images[0], unguided_labels[0]))
        print(f"{path.stem}: solved in {solve_seconds[path.stem]} s", flush=True)

    summary = summarize_layout_items(items)
    summary["wall seconds"] = round(time.time() - start, 1)
    meta = {"layouts": [str(p) for p in args.layouts], "canvas": args.canvas, "steps": args.steps, "seeds": seeds,
            "scale": args.scale, "solver_options": options, "item_overrides": overrides, "judge": judge.name,
            "model": args.model, "clip": args.clip, "solve_seconds": solve_seconds, "threads": torch.get_num_threads()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    with atomic_path(args.out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(meta | {"summary": summary, "items": items}, indent=2) + "\n")
    written.append(args.out.with_suffix(".json"))
    markdown = tables(items, summary, meta)
    with atomic_path(args.out.with_suffix(".md")) as tmp:
        tmp.write_text(markdown)
    written.append(args.out.with_suffix(".md"))
    print(markdown)
    if figure_rows:
        written.append(draw(figure_rows, judge.labels, canvas, args.out))
    print("wrote " + ", ".join(map(str, written)))
    return {"summary": summary, "items": items}


def tables(items: list[dict], summary: dict, meta: dict) -> str:
    lines = [f"Canvas {meta['canvas']}, {meta['steps']} steps, seeds {meta['seeds']}, solver options "
             f"{json.dumps(meta['solver_options'])}, clip item overrides {json.dumps(meta['item_overrides'])}", "",
             layout_items_markdown(items), "", "| summary | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary.items()]
    return "\n".join(lines) + "\n"


def draw(rows, names, canvas, out: Path) -> Path:
    from infd_solve.viz import image_rows, plot_layout

    panels = []
    folder = out.parent / f"{out.name}_layouts"  # the overlays at full size, one per layout and run
    for path, constraints, guided, labels, plain, plain_labels in rows:
        drawn = [plot_layout([image], canvas, constraints, folder / f"{path.stem}_{kind}.png", max_pixels=512)
                 for kind, image in (("guided", guided), ("unguided", plain))]
        panels.append((path.stem, [drawn[0], label_colours(labels, names),
                                   drawn[1], label_colours(plain_labels, names)]))
    return image_rows(panels, ["guided, layout drawn", "judge: guided", "unguided, layout drawn", "judge: unguided"],
                      out.with_suffix(".png"), panel=3.5, dpi=80)


if __name__ == "__main__":
    main()
    sys.exit(0)
