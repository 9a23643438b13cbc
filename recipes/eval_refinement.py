"""Does refinement undo the other constraints? Layouts that mix CLIP boxes with observations, scored before and
after the refinement steps, with the refinement holding the other constraints (the default) and without.

    python recipes/eval_refinement.py                 # 4 layouts x 3 seeds, canvas 256, the library's defaults
    python recipes/eval_refinement.py --seeds 0 --layouts readme

Layouts (observations cut from a held-out procedural scene, so the model can explain them):
``readme``, the README's API example (clouds, a forest polygon, a known patch); ``clouds_lowres``, clouds over a
low-resolution view of the whole canvas; ``corner_strip``, clouds in a corner and a known strip along the bottom;
``lake_blur``, a lake over a blurred view of the lower half. Every run is one solve: "before" is its sampled
latent (``Result.sampled_latent``), "after" its result, both scored by ``Result.report()`` (CLIP similarity for
boxes, ``model_fit`` for observations: how well the model alone explains them). Writes ``OUT/eval.json`` and
``OUT/table.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

LAYOUTS = ("readme", "clouds_lowres", "corner_strip", "lake_blur")
SCENE = 1_000_000_000 + 60_000  # a held-out scene (TEST_SEED_OFFSET + 60000)


def constraints(name: str, clip):
    from infd_solve.constraints import BlurObservation, ClipBox, LowResObservation, MaskedObservation
    from infd_solve.data import scene_tensor

    def cut(box, size):
        return scene_tensor(SCENE, size, box).float()

    if name == "readme":
        box = (0.4, 0.4, 0.525, 0.525)
        return [ClipBox("clouds", (0.0, 0.0, 1.0, 0.35), clip=clip),
                ClipBox("a forest", polygon=[(0, 0.55), (0.3, 0.5), (0.48, 0.62), (0, 0.76)], clip=clip),
                MaskedObservation(cut(box, 32), box=box)]
    if name == "clouds_lowres":
        return [ClipBox("clouds", (0.0, 0.0, 1.0, 0.4), clip=clip),
                LowResObservation(F.adaptive_avg_pool2d(cut((0, 0, 1, 1), 256), 24))]
    if name == "corner_strip":
        box = (0.0, 0.85, 1.0, 1.0)
        return [ClipBox("clouds", (0.0, 0.0, 0.4, 0.4), clip=clip), MaskedObservation(cut(box, (24, 160)), box=box)]
    box = (0.0, 0.5, 1.0, 1.0)
    kernel = {"type": "gaussian", "size": 15, "sigma": 2.0}
    from infd_solve.operators import Blur

    sharp = cut(box, (64, 128))
    return [ClipBox("a lake", (0.1, 0.65, 0.9, 0.95), clip=clip), BlurObservation(Blur(kernel, (64, 128))(sharp),
                                                                                   kernel, box=box)]


def scores(result) -> dict[str, float]:
    """Per constraint, the measure refinement may change: CLIP similarity, or the model's fit (dB)."""
    report = result.report()
    return {name: values.get("similarity", values.get("model_fit"))[0] for name, values in report.items()}


def run(model, clip, name: str, seed: int, hold: float) -> dict:
    from infd_solve import Result, Solver
    from infd_solve.consistency import correct

    cs = constraints(name, clip)
    result = Solver(model, refine_hold=hold, progress=False).solve(cs, seed=seed)
    z = result.sampled_latent
    with torch.no_grad():
        field = model.decode(z)
    before = Result(model, z, field, result.constraints, {}, correct(model, field, result.constraints))
    return {"before": scores(before), "after": scores(result)}


def table(rows: list[dict]) -> str:
    lines = ["| layout | constraint | before | after, holding the others | after, not holding |",
             "|---|---|---|---|---|"]
    for layout in dict.fromkeys(r["layout"] for r in rows):
        held = [r for r in rows if r["layout"] == layout and r["hold"] > 0]
        free = [r for r in rows if r["layout"] == layout and r["hold"] == 0]
        for name in held[0]["before"]:
            mean = lambda rs, key: float(np.mean([r[key][name] for r in rs]))  # noqa: E731
            spread = float(np.std([r["before"][name] for r in held]))
            lines.append(f"| {layout} | {name} | {mean(held, 'before'):.3f} ± {spread:.3f} | "
                         f"{mean(held, 'after'):.3f} | {mean(free, 'after'):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    import infd_solve
    from infd_solve.io import atomic_path

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("outputs/eval_refinement"))
    p.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, clip = infd_solve.load_model("default"), infd_solve.load_clip("default")
    rows = []
    jobs = [(n, s, h) for n in args.layouts for s in args.seeds for h in (10.0, 0.0)]
    for name, seed, hold in tqdm(jobs, desc="eval_refinement"):
        rows.append({"layout": name, "seed": seed, "hold": hold} | run(model, clip, name, seed, hold))
    text = table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / "eval.json") as tmp:
        tmp.write_text(json.dumps(rows, indent=1) + "\n")
    with atomic_path(args.out / "table.md") as tmp:
        tmp.write_text(text)
    print(text)
    return rows


if __name__ == "__main__":
    main()
    sys.exit(0)
