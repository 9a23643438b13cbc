"""Are layouts followed? Judged by the independent segmentation judge, not by the CLIP that guides them.

    python recipes/eval_layouts.py --threads 1                  # writes outputs/eval_layouts.{json,md,png}
    python recipes/eval_layouts.py --seeds 0 1 2 3 4 --steps 50
    python recipes/eval_layouts.py --item cutouts=0 --item margin=null --out outputs/eval_layouts_plain

Layouts: the README's example (``recipes/examples/landscape_2048.json``) and ``lake_forest``, ``corner_clouds``
and ``peak_meadow`` from ``recipes/examples/`` (or ``--layouts``), each solved on ``--canvas`` (256) with
``--steps`` (25) for each of ``--seeds`` (0-2), with its guidance and without (the same seeds, so the same
noise). ``--item KEY=JSON`` sets a field of every "clip" item (e.g. ``cutouts=8``, ``active=[0,600]``,
``margin=null``), to compare guidance settings.

Each "clip" item's prompt names the labels it asks for (``PROMPT_LABELS``: "a lake" -> water, "snowy
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

import numpy as np
import shapely
import torch

import infd_solve
from infd_solve.clip import load_clip
from infd_solve.io import atomic_path
from infd_solve.judge import load_judge
from infd_solve.layout import parse_layout, read_layout
from infd_solve.regions import rasterize

EXAMPLES = Path(__file__).parent / "examples"
LAYOUTS = [EXAMPLES / f"{name}.json" for name in ("landscape_2048", "lake_forest", "corner_clouds", "peak_meadow")]
PROMPT_LABELS = {
    "clouds": ("cloud",), "a cloudy sky": ("cloud",), "a clear sky": ("sky",), "the sun": ("sun",),
    "the moon": ("moon",), "snowy mountains": ("snow", "mountain"), "snowy peaks": ("snow", "mountain"),
    "rocky mountains": ("mountain", "snow"), "a forest": ("forest",), "a grassy meadow": ("grass",),
    "a lake": ("water",), "fog": ("fog",),
}
PALETTE = {"sky": (0.55, 0.75, 0.95), "cloud": (1.0, 1.0, 1.0), "sun": (1.0, 0.85, 0.1), "moon": (0.9, 0.9, 0.7),
           "mountain": (0.5, 0.45, 0.4), "snow": (0.75, 0.95, 1.0), "forest": (0.1, 0.4, 0.15),
           "grass": (0.5, 0.8, 0.25), "water": (0.1, 0.3, 0.85), "fog": (0.8, 0.7, 0.9)}


def target_labels(prompt: str) -> tuple[str, ...]:
    try:
        return PROMPT_LABELS[prompt]
    except KeyError:
        raise SystemExit(f"prompt {prompt!r} has no label mapping; add it to PROMPT_LABELS") from None


def region_of(constraint):
    return constraint.geometry if constraint.geometry is not None else shapely.box(*constraint.box)


def mirrored(box):
    left, top, right, bottom = box
    return (1 - right, top, 1 - left, bottom)


def parse_item_overrides(pairs) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--item and --solver take KEY=JSON, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def judge_items(judge, labels: torch.Tensor, constraints, canvas) -> list[dict]:
    """Per "clip" item, per sample: share of its region / outside / mirrored box labelled as asked."""
    clips = [c for c in constraints if hasattr(c, "prompt")]
    masks = {c.name: rasterize(region_of(c), (0.0, 0.0, 1.0, 1.0), canvas)[0, 0] for c in clips}
    out = []
    for c in clips:
        targets = target_labels(c.prompt)
        asking = [o for o in clips if set(target_labels(o.prompt)) & set(targets)]
        union = torch.stack([masks[o.name] for o in asking]).amax(0)
        mirror = shapely.box(*mirrored(c.box))
        mirror_free = mirror.intersection(region_of(c)).area < 0.05 * mirror.area
        row = {"name": c.name, "prompt": c.prompt, "labels": targets,
               "in": judge.fractions(labels, targets, masks[c.name]).tolist(),
               "outside": judge.fractions(labels, targets, 1 - union).tolist()}
        if mirror_free:
            m = rasterize(mirror, (0.0, 0.0, 1.0, 1.0), canvas)[0, 0]
            row["mirror"] = judge.fractions(labels, targets, m).tolist()
        out.append(row)
    return out


def label_image(labels: torch.Tensor, names) -> torch.Tensor:
    """``H x W`` label indices -> ``3 x H x W`` colours in [-1, 1]."""
    colours = torch.tensor([PALETTE.get(n, (0.5, 0.5, 0.5)) for n in names])
    return colours[labels].permute(2, 0, 1) * 2 - 1


def solve(model, constraints, seeds, steps, options):
    """One result per seed, batched when the seeds are consecutive (sample i uses seed + i)."""
    solver = infd_solve.Solver(model, steps=steps, progress=False, **options)
    if list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return solver.solve(constraints, batch_size=len(seeds), seed=seeds[0])
    raise SystemExit("--seeds must be consecutive integers (sample i of a batch uses seed + i)")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
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
    overrides = parse_item_overrides(args.item)
    options = {"scale": args.scale} | parse_item_overrides(args.solver)
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
        t0 = time.time()
        result = solve(model, constraints, seeds, args.steps, options)
        solve_seconds[path.stem] = round(time.time() - t0, 1)
        with torch.no_grad():
            images = result.render(canvas)
        labels = judge.segment(images)
        guided_rows = judge_items(judge, labels, constraints, canvas)
        plain_rows = judge_items(judge, unguided_labels, constraints, canvas)
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

    summary = summarize(items)
    summary["wall seconds"] = round(time.time() - start, 1)
    meta = {"layouts": [str(p) for p in args.layouts], "canvas": args.canvas, "steps": args.steps, "seeds": seeds,
            "scale": args.scale, "solver_options": options, "item_overrides": overrides, "judge": judge.name, "model": args.model,
            "clip": args.clip, "solve_seconds": solve_seconds, "threads": torch.get_num_threads()}
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


def summarize(items: list[dict]) -> dict:
    mean = lambda v: float(np.mean(v))  # noqa: E731
    g = np.array([mean(i["judge_guided"]) for i in items])
    u = np.array([mean(i["judge_unguided"]) for i in items])
    cg = np.array([mean(i["clip_guided"]) for i in items])
    cu = np.array([mean(i["clip_unguided"]) for i in items])
    leak = np.array([mean(i["outside_guided"]) - mean(i["outside_unguided"]) for i in items])
    per_g = np.concatenate([i["judge_guided"] for i in items])
    per_u = np.concatenate([i["judge_unguided"] for i in items])
    per_cg = np.concatenate([i["clip_guided"] for i in items])
    per_cu = np.concatenate([i["clip_unguided"] for i in items])
    return {
        "items": len(items),
        "guided beats unguided (judge, % of items)": round(100 * float((g > u).mean()), 1),
        "mean target share in box, guided": round(float(g.mean()), 3),
        "mean target share in box, unguided": round(float(u.mean()), 3),
        "mean leakage (share outside, guided - unguided)": round(float(leak.mean()), 3),
        "CLIP and judge agree (% of items)": round(100 * float((np.sign(cg - cu) == np.sign(g - u)).mean()), 1),
        "guided beats unguided (judge, % of item-seeds)": round(100 * float((per_g > per_u).mean()), 1),
        "CLIP and judge agree (% of item-seeds)":
            round(100 * float((np.sign(per_cg - per_cu) == np.sign(per_g - per_u)).mean()), 1),
        "mean CLIP similarity, guided": round(float(cg.mean()), 3),
        "mean CLIP similarity, unguided": round(float(cu.mean()), 3),
    }


def tables(items: list[dict], summary: dict, meta: dict) -> str:
    mean = lambda v: float(np.mean(v))  # noqa: E731
    lines = [f"Canvas {meta['canvas']}, {meta['steps']} steps, seeds {meta['seeds']}, solver options "
             f"{json.dumps(meta['solver_options'])}, clip item overrides {json.dumps(meta['item_overrides'])}", "",
             "| layout | prompt (labels) | in box: guided / unguided | leakage | mirror box: guided / unguided "
             "| CLIP: guided / unguided | judge wins | CLIP agrees |", "|---|---|---|---|---|---|---|---|"]
    for i in items:
        g, u, cg, cu = (mean(i[k]) for k in ("judge_guided", "judge_unguided", "clip_guided", "clip_unguided"))
        leak = mean(i["outside_guided"]) - mean(i["outside_unguided"])
        mirror = (f"{mean(i['mirror_guided']):.2f} / {mean(i['mirror_unguided']):.2f}" if "mirror_guided" in i
                  else "")
        lines.append(f"| {i['layout']} | {i['prompt']} ({', '.join(i['labels'])}) | {g:.2f} / {u:.2f} | {leak:+.3f} "
                     f"| {mirror} | {cg:.2f} / {cu:.2f} | {'yes' if g > u else 'no'} "
                     f"| {'yes' if np.sign(cg - cu) == np.sign(g - u) else 'no'} |")
    lines += ["", "| summary | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary.items()]
    return "\n".join(lines) + "\n"


def draw(rows, names, canvas, out: Path) -> Path:
    from infd_solve.viz import image_rows, plot_layout

    panels = []
    folder = out.parent / f"{out.name}_layouts"  # the overlays at full size, one per layout and run
    for path, constraints, guided, labels, plain, plain_labels in rows:
        drawn = [plot_layout([image], canvas, constraints, folder / f"{path.stem}_{kind}.png", max_pixels=512)
                 for kind, image in (("guided", guided), ("unguided", plain))]
        panels.append((path.stem, [drawn[0], label_image(labels, names), drawn[1], label_image(plain_labels, names)]))
    return image_rows(panels, ["guided, layout drawn", "judge: guided", "unguided, layout drawn", "judge: unguided"],
                      out.with_suffix(".png"), panel=3.5, dpi=80)


if __name__ == "__main__":
    main()
    sys.exit(0)
