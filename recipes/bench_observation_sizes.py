"""Observation guidance across image sizes, with the library's defaults (``Solver(model)``, nothing tuned).

    python recipes/bench_observation_sizes.py                       # writes outputs/bench_observation_sizes.*
    python recipes/bench_observation_sizes.py --sizes 64 256 --sr-sizes 32 --seeds 0

- inpainting: one image (a sample of the default model rendered at 2048, box-downsampled to each size) with
  the same centre square unknown, at every size: known-region PSNR on the image's own grid, and seconds;
- super-resolution x8: the same image box-downsampled to 8S (the truth) and to S (the observation):
  measurement consistency, PSNR against the truth, plain bicubic for reference, seconds;
- a held-out procedural scene rendered at 512 (detail finer than the model knows) as a "user photo", for
  both tasks: it must not diverge.

Every row is a solve with ``Solver(model)`` defaults; seconds are wall time of the solve on this machine.
Also writes a Markdown table, a JSON file and a before/after grid.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import shapely
import torch
import torch.nn.functional as F

import infd_solve
from infd_solve import cli
from infd_solve.constraints import LowResObservation, MaskedObservation
from infd_solve.data import TEST_SEED_OFFSET, scene_tensor
from infd_solve.io import atomic_path, save_figure
from infd_solve.metrics import psnr
from infd_solve.regions import CANVAS

HOLE = shapely.box(0.3, 0.3, 0.7, 0.7)  # the part to fill, in canvas fractions


def model_image(model, side: int, seed: int) -> torch.Tensor:
    """A sample of the model's own prior rendered at ``side``: an image the model can represent exactly."""
    z = model.sample(1, steps=50, generator=[torch.Generator().manual_seed(seed)], progress=False)
    with torch.no_grad():
        return model.render_image(model.decode(z), side).clamp(-1, 1).cpu()


def inpaint(model, image, seed):
    c = MaskedObservation(image, mask=shapely.difference(CANVAS, HOLE))
    start = time.perf_counter()
    result = infd_solve.Solver(model, progress=False).solve([c], seed=seed)
    seconds = time.perf_counter() - start
    out = result.render(image.shape[-1]).cpu()
    given = image * c.image_mask + (c.image_mask - 1)  # the unknown part shown black
    return {"known PSNR (dB)": result.report()[c.name]["psnr"][0], "seconds": seconds,
            "latent norm": float(result.latent.norm())}, given, out


def super_resolve(model, truth, seed):
    low = F.avg_pool2d(truth, 8)
    c = LowResObservation(low)
    start = time.perf_counter()
    result = infd_solve.Solver(model, progress=False).solve([c], seed=seed)
    seconds = time.perf_counter() - start
    out = result.render(truth.shape[-1]).clamp(-1, 1).cpu()
    bicubic = F.interpolate(low, size=truth.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)
    return {"consistency (dB)": result.report()[c.name]["psnr"][0], "PSNR vs truth (dB)": psnr(out, truth).item(),
            "bicubic vs truth (dB)": psnr(bicubic, truth).item(), "seconds": seconds,
            "latent norm": float(result.latent.norm())}, F.interpolate(low, size=truth.shape[-2:]), out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024], help="inpainting sizes")
    p.add_argument("--sr-sizes", type=int, nargs="+", default=[32, 64, 128, 256], help="SR x8 input sizes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="solver seeds")
    p.add_argument("--image-seed", type=int, default=1000, help="seed of the model sample used as the image")
    p.add_argument("--out", type=Path, default=Path("outputs/bench_observation_sizes"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = cli.load_sampling_model(cli.model_path(args.model), args.device)
    side = max(max(args.sizes), 8 * max(args.sr_sizes))
    image = model_image(model, side, args.image_seed)
    rows, pictures = [], []

    def run(task, source, size, solve, target):
        values = [solve(model, target, seed) for seed in args.seeds]
        row = {"task": task, "image": source, "size": size}
        for key in values[0][0]:
            row[key] = float(np.mean([v[0][key] for v in values]))
        row["min PSNR (dB)"] = float(min(v[0].get("known PSNR (dB)", v[0].get("consistency (dB)")) for v in values))
        rows.append(row)
        print(" | ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
        pictures.append((f"{task} {source} {size}", *values[0][1:]))

    for size in args.sizes:
        run("inpaint", "model sample", size, inpaint, F.adaptive_avg_pool2d(image, size))
    for size in args.sr_sizes:
        run("SR x8", "model sample", f"{size}->{8 * size}", super_resolve, F.adaptive_avg_pool2d(image, 8 * size))
    run("inpaint", "held-out scene", 512, inpaint, scene_tensor(TEST_SEED_OFFSET + 7, 512))
    run("SR x8", "held-out scene", "64->512", super_resolve, scene_tensor(TEST_SEED_OFFSET + 7, 512))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.2f}" if isinstance(r.get(k), float) else str(r.get(k, ""))
                                       for k in keys) + " |")
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    meta = f"Solver defaults, seeds {args.seeds}, torch threads {torch.get_num_threads()}, device {model.device}\n"
    with atomic_path(args.out.with_suffix(".md")) as tmp:
        tmp.write_text(meta + "\n" + table)
    import json

    with atomic_path(args.out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps({"seeds": args.seeds, "rows": rows}, indent=2) + "\n")
    draw(pictures, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.md')}, .json and .png")
    return rows


def draw(pictures, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(pictures), 2, figsize=(6, 3 * len(pictures)), squeeze=False)
    for row, (title, before, after) in enumerate(pictures):
        for col, (image, name) in enumerate(((before, "given"), (after, "result"))):
            axes[row, col].imshow(((image[0].permute(1, 2, 0).clamp(-1, 1) + 1) / 2).numpy())
            axes[row, col].set_title(f"{title}: {name}", fontsize=8)
            axes[row, col].axis("off")
    fig.tight_layout()
    return save_figure(fig, path, dpi=70)


if __name__ == "__main__":
    main()
    sys.exit(0)
