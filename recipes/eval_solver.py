"""Evaluate the solver on the default model with held-out procedural scenes (ground truth at every scale).

    python recipes/eval_solver.py                 # writes outputs/eval_solver.{json,png}
    python recipes/eval_solver.py --scenes 4 --steps 25

- super-resolution x8 (64 -> 512), no noise: measurement consistency (the result seen through the operator vs
  the observation, PSNR; target >= 30 dB) and PSNR against the 512 ground truth, for each LowResObservation
  operator ("render": the field rendered on the observation grid; "area"/"bicubic": rendered at 4x, then
  downsampled); the operator with the best ground-truth PSNR is the one to use by default;
- inpainting: a 256^2 view with its centre square unknown; PSNR of the known region (target >= 28 dB);
- CLIP boxes: for random boxes whose ground-truth content is one label, the CLIP score of the final box
  render with guidance vs without (same seeds); target: guidance higher for >= 90 % of boxes;
- CLIP views: the example layout's elongated boxes guided through square views (ClipBox's default) vs
  squashed into one square (``max_views=1``), 3 seeds; each result scored both ways (mean CLIP similarity).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import infd_solve
from infd_solve import cli
from infd_solve.clip import load_clip
from infd_solve.constraints import ClipBox, LowResObservation, MaskedObservation
from infd_solve.data import LABELS, TEST_SEED_OFFSET, label_captions, render_scene, sample_scene, scene_tensor
from infd_solve.io import save_figure
from infd_solve.layout import parse_layout, read_layout
from infd_solve.metrics import psnr
from infd_solve.samplers import SAMPLERS


TASKS = ["sr", "inpainting", "clip", "clip-views"]
VIEWS_LAYOUT = Path(__file__).parent / "examples" / "landscape_2048.json"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--clip", default="default")
    p.add_argument("--scenes", type=int, default=8)
    p.add_argument("--boxes", type=int, default=20)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--scale", type=float, default=1.0,
                   help="the solver's global guidance scale (default: the library's, 1; weights are each "
                        "constraint's default)")
    p.add_argument("--refine-steps", type=int, default=None,
                   help="data-consistency steps after sampling (default: the library's: observations refine)")
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=TASKS)
    p.add_argument("--sampler", choices=["auto", *SAMPLERS], default="auto",
                   help="sampler family (default: the one the constraints prefer, as the library does)")
    p.add_argument("--out", type=Path, default=Path("outputs/eval_solver"))
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    model = infd_solve.load_model(args.model)
    clip = load_clip(args.clip)
    seeds = [TEST_SEED_OFFSET + 20_000 + i for i in range(args.scenes)]
    table, figure_rows = {}, []

    def solver(scale=args.scale, refine_steps=args.refine_steps):
        return infd_solve.Solver(model, steps=args.steps, sampler=args.sampler, guidance_scale=scale,
                                 refine_steps=refine_steps, progress=False)

    if "sr" in args.tasks:
        baseline = [psnr(F.interpolate(scene_tensor(seed, 64), size=512, mode="bicubic", align_corners=False)
                         .clamp(-1, 1), scene_tensor(seed, 512)).item() for seed in seeds]
        table["SR x8 PSNR vs 512 truth, plain bicubic upsampling (dB)"] = float(np.mean(baseline))
        for operator in ("render", "area", "bicubic"):
            consistency, fidelity = [], []
            for k, seed in enumerate(tqdm(seeds, desc=f"SR x8 ({operator})")):
                low, truth = scene_tensor(seed, 64), scene_tensor(seed, 512)
                c = LowResObservation(low, operator=operator)
                result = solver().solve([c], seed=k)
                consistency.append(result.report()[c.name]["psnr"][0])
                with torch.no_grad():
                    high = result.render(512).clamp(-1, 1)
                fidelity.append(psnr(high, truth).item())
                if operator == "area" and k < 3:  # the default operator
                    bicubic = F.interpolate(low, size=512, mode="bicubic", align_corners=False).clamp(-1, 1)
                    figure_rows.append(("SR x8", [bicubic, high, truth]))
            table[f"SR x8 consistency, {operator} (dB)"] = float(np.mean(consistency))
            table[f"SR x8 PSNR vs 512 truth, {operator} (dB)"] = float(np.mean(fidelity))

    if "inpainting" in args.tasks:
        known_psnr = []
        mask = torch.ones(1, 1, 256, 256)
        mask[..., 64:192, 64:192] = 0
        for k, seed in enumerate(tqdm(seeds, desc="inpainting")):
            image = scene_tensor(seed, 256)
            c = MaskedObservation(image, mask=mask)
            result = solver().solve([c], seed=k)
            known_psnr.append(result.report()[c.name]["psnr"][0])
            with torch.no_grad():
                out = result.render(256)
            if k < 3:
                figure_rows.append(("inpainting", [image * mask - (1 - mask), out, image]))
        table["inpainting known-region PSNR (dB)"] = float(np.mean(known_psnr))

    if "clip" in args.tasks:
        rng = np.random.default_rng(0)
        prompts = label_captions()
        wins, total = 0, 0
        bar = tqdm(total=args.boxes, desc="CLIP boxes")
        attempt = 0
        while total < args.boxes and attempt < 50 * args.boxes:
            attempt += 1
            seed = TEST_SEED_OFFSET + 30_000 + attempt
            side = rng.uniform(0.2, 0.5)
            left, top = rng.uniform(0, 1 - side, size=2)
            box = (float(left), float(top), float(left + side), float(top + side))
            _, labels = render_scene(sample_scene(seed), box, (32, 32))
            counts = np.bincount(labels.ravel(), minlength=len(LABELS)) / labels.size
            if counts.max() < 0.6:
                continue
            c = ClipBox(prompts[LABELS[int(counts.argmax())]], box, clip=clip)
            scores = []
            for scale in (args.scale, 0.0):
                result = solver(scale).solve([c], seed=total)
                with torch.no_grad():
                    scores.append(c.similarity(result.render(c.size, c.box)).item())
            wins += scores[0] > scores[1]
            total += 1
            bar.update()
        bar.close()
        table[f"CLIP box score guided > unguided ({total} boxes, %)"] = 100 * wins / max(total, 1)
    if "clip-views" in args.tasks:
        settings, viewed = parse_layout(VIEWS_LAYOUT, clip=clip)
        layout = read_layout(VIEWS_LAYOUT)  # the same items, each squashed into one square view
        _, squashed = parse_layout(layout | {"items": [item | {"max_views": 1} for item in layout["items"]]},
                                   clip=clip, base_dir=VIEWS_LAYOUT.parent)
        kwargs = settings.solver_kwargs() | {"steps": args.steps}
        for guided_by, constraints in (("square views", viewed), ("squashed", squashed)):
            scores = {"square views": [], "squashed": []}
            for seed in tqdm(range(3), desc=f"CLIP guided by {guided_by}"):
                result = infd_solve.Solver(model, progress=False, **kwargs).solve(constraints, seed=seed)
                with torch.no_grad():
                    for scored_by, cs in (("square views", viewed), ("squashed", squashed)):
                        scores[scored_by] += [c.similarity(result.render(c.size, c.box)).item() for c in cs]
            for scored_by, values in scores.items():
                key = f"example layout guided by {guided_by}: CLIP similarity seen as {scored_by}"
                table[key] = float(np.mean(values))
    table["wall time (s)"] = round(time.time() - start, 1)

    cli.report_table(table, args.out.with_suffix(".json"), scenes=args.scenes, steps=args.steps, sampler=args.sampler,
                     scale=args.scale, refine_steps=args.refine_steps)
    written = [args.out.with_suffix(".json")]
    if figure_rows:
        written.append(draw(figure_rows, args.out.with_suffix(".png")))
    print("wrote " + " and ".join(map(str, written)))
    return table


def draw(rows, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
    for r, (kind, images) in enumerate(rows):
        titles = ["bicubic x8", "ours x8", "truth"] if kind == "SR x8" else ["observed (hole black)", "ours", "truth"]
        for c, (image, title) in enumerate(zip(images, titles)):
            axes[r, c].imshow(((image[0].permute(1, 2, 0).clamp(-1, 1) + 1) / 2).numpy())
            axes[r, c].set_title(title, fontsize=9)
            axes[r, c].axis("off")
    fig.tight_layout()
    return save_figure(fig, path, dpi=70)


if __name__ == "__main__":
    main()
    sys.exit(0)
