"""Images the model did not make: real photographs and held-out scenes, through the library's defaults, against
the classical answers and the truth at the same size.

    python recipes/eval_photos.py                          # every photo + 6 held-out scenes, at 256 and 512
    python recipes/eval_photos.py --sizes 256 --scenes 2 --photos astronaut camera --tasks sr4 hole

Photos: ``tests/fixtures/photos`` (public domain / CC0, see its ``LICENSES.md``), centre-cropped squares
area-resized to each ``--sizes`` (a photo smaller than a size is skipped there). Scenes: held-out procedural
landscapes (seeds from ``TEST_SEED_OFFSET + 50000``) rendered at each size. Tasks: ``sr4`` / ``sr8``, the truth
area-averaged by 4 / 8 (``infd-sr``'s default operator); ``hole``, a centre box of 0.3 x 0.3 of the side
unknown (``infd-inpaint --polygon "0.35,0.35 0.65,0.35 0.65,0.65 0.35,0.65"``); ``random``, 70 % of the pixels
unknown (all channels, seeded).

Each job is solved once with the defaults (``Solver(model)``, seed 0), its sampled latent cached in
``OUT/cache``, so a rerun only rescores. Each result is then made consistent with its observation in several
ways, all scored:

- ``model``: the model's own render, no correction;
- ``paste-back`` (inpainting: the known pixels pasted over the render through a mask feathered over 8 px into
  the known side, as inpainting pipelines do) or ``back-projection`` (SR: 10 steps of iterative
  back-projection with bicubic upsampling);
- ``correction, trust 1``: the library's residual correction (:mod:`infd_solve.consistency`), keeping all of
  the model's render;
- ``default``: the library's default, the trust chosen from how well the model explains the observation;
- ``classical``: bicubic upsampling, or a harmonic fill (:mod:`infd_solve.baselines`).

Measures, on the 8-bit outputs: ``known`` (inpainting: PSNR on the known pixels vs the given image),
``consistency`` (SR: the output area-averaged back vs the input), ``psnr`` vs the truth, ``hole`` (PSNR on the
unknown pixels), ``seam`` (inpainting: the mean gradient magnitude on the two pixel rings at the hole's border
over the truth's there; 1 = no seam). Writes ``OUT/eval.json``, ``OUT/table.md`` (with every job where the
default misses a target: known pixels >= 45 dB, SR consistency >= 40 dB, PSNR >= bicubic - 0.5 dB, hole >= a
harmonic fill - 1 dB) and ``OUT/examples.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO / "tests" / "fixtures" / "photos"
TASKS = ("sr4", "sr8", "hole", "random")
VARIANTS = ("model", "paste-back", "back-projection", "correction, trust 1", "correction, trust 0", "default",
            "classical")
SCENE_SEEDS = 50_000  # offset from TEST_SEED_OFFSET: scenes no other evaluation uses


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("outputs/eval_photos"))
    p.add_argument("--model", default="default")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--photos", nargs="*", default=None, help="photo names (default: all in tests/fixtures/photos)")
    p.add_argument("--scenes", type=int, default=6, help="held-out procedural scenes")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------ images and tasks
def images(args, size: int) -> list[tuple[str, str, torch.Tensor]]:
    """``(name, "photo" | "scene", truth 1 x 3 x size x size)``."""
    from infd_solve.data import TEST_SEED_OFFSET, scene_tensor
    from infd_solve.io import load_image

    out = []
    for path in sorted(PHOTOS.glob("*.png")):
        if args.photos is None or path.stem in args.photos:
            photo = load_image(path)
            if photo.shape[-1] >= size:
                out.append((path.stem, "photo", F.interpolate(photo, size=(size, size), mode="area")))
    for i in range(args.scenes):
        seed = TEST_SEED_OFFSET + SCENE_SEEDS + i
        out.append((f"scene{i}", "scene", scene_tensor(seed, size).float()))
    return out


def hole_mask(size: int, task: str) -> torch.Tensor:
    """1 = known."""
    mask = torch.ones(1, 1, size, size)
    if task == "hole":
        a, b = round(0.35 * size), round(0.65 * size)
        mask[..., a:b, a:b] = 0
    else:
        rng = np.random.default_rng(size)
        mask.view(-1)[torch.from_numpy(rng.permutation(size * size)[: round(0.7 * size * size)])] = 0
    return mask


def observation(truth: torch.Tensor, task: str):
    """The task's constraint, built as the commands build it, and the mask (inpainting) or low-res image."""
    from infd_solve.constraints import LowResObservation, MaskedObservation
    from infd_solve.io import to_uint8

    size = truth.shape[-1]
    quantized = to_uint8(truth).movedim(-1, -3).float() / 127.5 - 1  # what a PNG holds
    if task.startswith("sr"):
        low = F.adaptive_avg_pool2d(quantized, size // int(task[2:]))
        low = to_uint8(low).movedim(-1, -3).float() / 127.5 - 1
        return LowResObservation(low), low
    mask = hole_mask(size, task)
    return MaskedObservation(quantized, mask=mask), mask


# ------------------------------------------------------------------------------------------ solving
def solve(model, constraint, key: str, cache: Path):
    """The default solve's result (its latent cached), without corrections."""
    from infd_solve import Result, Solver

    path = cache / f"{key}.pt"
    if path.is_file():
        z = torch.load(path, weights_only=True)
        seconds = None
    else:
        start = time.perf_counter()
        z = Solver(model, consistency=False, progress=False).solve([constraint], seed=0).latent
        seconds = time.perf_counter() - start
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(z, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    with torch.no_grad():
        field = model.decode(z)
    return Result(model, z, field, [constraint.to(model.device, model.dtype)]), seconds


def corrected(result, constraint, trust, size) -> torch.Tensor:
    from infd_solve.consistency import correct

    constraint.trust = trust
    result.corrections = correct(result.model, result.field, [constraint])
    constraint.trust = None
    return result.render(size)


def paste_back(render: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, feather: int = 8) -> torch.Tensor:
    """Known pixels pasted over ``render``, the paste's weight rising from 0 at the hole over ``feather`` px."""
    known = (mask >= 0.5).float()
    weight, eroded = torch.zeros_like(known), known
    for _ in range(feather):  # weight k / feather at k pixels from the hole
        weight, eroded = weight + eroded / feather, -F.max_pool2d(-eroded, 3, 1, 1)
    return weight * image + (1 - weight) * render


def back_projection(render: torch.Tensor, low: torch.Tensor, steps: int = 10) -> torch.Tensor:
    out = render
    for _ in range(steps):
        out = out + F.interpolate(low - F.adaptive_avg_pool2d(out, low.shape[-2:]), size=out.shape[-2:],
                                  mode="bicubic", align_corners=False)
    return out


def variants(result, constraint, task: str, data: torch.Tensor, size) -> dict[str, torch.Tensor]:
    from infd_solve.baselines import bicubic, harmonic_fill

    model = result.render(size, corrected=False)
    out = {"model": model, "correction, trust 1": corrected(result, constraint, 1.0, size),
           "correction, trust 0": corrected(result, constraint, 0.0, size),
           "default": corrected(result, constraint, None, size)}
    if task.startswith("sr"):
        out |= {"back-projection": back_projection(model, data), "classical": bicubic(data, size)}
    else:
        out |= {"paste-back": paste_back(model, constraint.image, data),
                "classical": harmonic_fill(constraint.image, data)}
    return out


# ------------------------------------------------------------------------------------------ measures
def eight_bit(x: torch.Tensor) -> torch.Tensor:
    from infd_solve.io import to_uint8

    return to_uint8(x).movedim(-1, -3).double() / 127.5 - 1


def seam_ratio(image: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean gradient magnitude on the two pixel rings at the hole's border, over the truth's there."""
    known = (mask >= 0.5).double()
    border = (F.max_pool2d(1 - known, 3, 1, 1) * F.max_pool2d(known, 3, 1, 1))[0, 0] > 0

    def gradient(x):
        gy, gx = torch.zeros_like(x), torch.zeros_like(x)
        gy[..., 1:, :], gx[..., :, 1:] = x.diff(dim=-2), x.diff(dim=-1)
        return (gy.square() + gx.square()).sqrt().mean(1)[0]

    return float(gradient(image)[border].mean() / gradient(truth)[border].mean().clamp_min(1e-9))


def measures(image, truth, task: str, constraint, data) -> dict[str, float]:
    from infd_solve.fidelity import GaussianFidelity

    x, truth = eight_bit(image), truth.double()
    out = {"psnr": float(GaussianFidelity.psnr(x, truth))}
    if task.startswith("sr"):
        out["consistency"] = float(GaussianFidelity.psnr(F.adaptive_avg_pool2d(x, data.shape[-2:]), data.double()))
    else:
        known = (data >= 0.5).double()
        out |= {"known": float(GaussianFidelity.psnr(x, constraint.image.double(), known)),
                "hole": float(GaussianFidelity.psnr(x, truth, 1 - known))}
        if task == "hole":
            out["seam"] = seam_ratio(x, truth, data)
    return out


def best_trust(outputs: dict, truth: torch.Tensor, mask: torch.Tensor | None) -> float:
    """The trust that would have been best, knowing the truth (on the unknown pixels, or everywhere for SR):
    the output is linear in the trust, so it is a least-squares fit between the trust-0 and trust-1 outputs."""
    low, high = outputs["correction, trust 0"].double(), outputs["correction, trust 1"].double()
    weight = torch.ones_like(truth[:, :1]) if mask is None else 1 - (mask >= 0.5).double()
    step = (high - low) * weight
    return float(((step * (truth.double() - low)).sum() / step.square().sum().clamp_min(1e-12)).clamp(0, 1))


def other_sizes(result, constraint, task: str, data, size: int) -> dict[str, float]:
    """The default's guarantee when the canvas is rendered at another size: SR consistency of the render at
    2x and 4x the size, area-averaged to the input; the known pixels of the render at 2x, area-averaged back."""
    from infd_solve.fidelity import GaussianFidelity

    out = {}
    for factor in ((2, 4) if task.startswith("sr") else (2,)):
        x = eight_bit(result.render(size * factor))
        if task.startswith("sr"):
            out[f"consistency x{factor}"] = float(GaussianFidelity.psnr(F.adaptive_avg_pool2d(x, data.shape[-2:]),
                                                                         data.double()))
        else:
            known, image = (data >= 0.5).double(), constraint.image.double()
            out[f"known x{factor}"] = float(GaussianFidelity.psnr(F.avg_pool2d(x, factor), image, known))
            # the same measure of the image itself enlarged bicubically: what resampling alone costs
            enlarged = F.interpolate(image, scale_factor=factor, mode="bicubic", align_corners=False).clamp(-1, 1)
            out[f"known x{factor}, bicubic enlargement"] = float(GaussianFidelity.psnr(F.avg_pool2d(enlarged, factor),
                                                                                       image, known))
    return out


# ------------------------------------------------------------------------------------------ the run
def run_job(model, args, name, kind, truth, task) -> tuple[dict, dict[str, torch.Tensor]]:
    constraint, data = observation(truth, task)
    size = truth.shape[-1]
    result, seconds = solve(model, constraint, f"{name}_{size}_{task}", args.out / "cache")
    outputs = variants(result, constraint, task, data, truth.shape[-2:])
    fix = result.corrections[0]  # the default's, computed last
    row = {"image": name, "kind": kind, "size": size, "task": task, "seconds": seconds,
           "default at other sizes": other_sizes(result, constraint, task, data, size),
           "model_fit_db": float(fix.fit_db[0]), "trust": float(fix.gain[0]), "note": fix.notes[0],
           "best_trust": best_trust(outputs, truth, data if task in ("hole", "random") else None),
           "variants": {v: measures(x, truth, task, constraint, data) for v, x in outputs.items()}}
    return row, outputs


def summarize(rows: list[dict]) -> list[dict]:
    """Means per (kind, size, task, variant), with the default's margins to the classical answer."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        for variant, values in row["variants"].items():
            groups.setdefault((row["kind"], row["size"], row["task"], variant), []).append(values)
    table = []
    ordered = sorted(groups.items(), key=lambda kv: (kv[0][:3], VARIANTS.index(kv[0][3])))
    for (kind, size, task, variant), values in ordered:
        mean = {k: float(np.mean([min(v[k], 99.0) for v in values])) for k in values[0]}
        worst = {f"min {k}": float(np.min([v[k] for v in values])) for k in ("known", "consistency") if k in values[0]}
        table.append({"kind": kind, "size": size, "task": task, "variant": variant, "n": len(values)} | mean | worst)
    return table


# the targets of the default on every image (issue: the user's own photos): known pixels, SR consistency, and
# never worse than the classical answer by more than the margin (dB)
TARGETS = {"known": 45.0, "consistency": 40.0}
MARGINS = {"sr4": ("psnr", 0.5), "sr8": ("psnr", 0.5), "hole": ("hole", 1.0), "random": ("hole", 1.0)}


def target_misses(rows: list[dict]) -> list[str]:
    """Each image where the default misses a target, in one line."""
    misses = []
    for row in rows:
        default, classical = row["variants"]["default"], row["variants"]["classical"]
        where = f"{row['image']} {row['size']} {row['task']}"
        misses += [f"{where}: {k} {default[k]:.2f} < {floor}" for k, floor in TARGETS.items()
                   if k in default and default[k] < floor]
        measure, margin = MARGINS[row["task"]]
        if default[measure] < classical[measure] - margin:
            misses.append(f"{where}: {measure} {default[measure]:.2f} < classical {classical[measure]:.2f} - {margin}")
    return misses


def table_text(table: list[dict]) -> str:
    columns = ["kind", "size", "task", "variant", "n", "psnr", "hole", "known", "min known", "consistency",
               "min consistency", "seam"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table:
        cells = [row.get(c, "") for c in columns]
        lines.append("| " + " | ".join(f"{c:.2f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def figure(examples: list[tuple[str, torch.Tensor, dict]], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from infd_solve.io import save_figure, to_uint8

    shown = ("truth", "model", "default", "classical")
    fig, axes = plt.subplots(len(examples), len(shown), figsize=(2.6 * len(shown), 2.6 * len(examples)), squeeze=False)
    for row, (title, truth, outputs) in zip(axes, examples):
        for ax, name in zip(row, shown):
            ax.imshow(to_uint8((truth if name == "truth" else outputs[name])[0]).numpy())
            ax.set_title(f"{title}: {name}" if name == "truth" else name, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv=None):
    import infd_solve
    from infd_solve.io import atomic_path

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = infd_solve.load_model(args.model).eval()
    jobs = [(size, *image, task) for size in args.sizes for image in images(args, size) for task in args.tasks]
    rows, examples, start = [], [], time.time()
    for size, name, kind, truth, task in tqdm(jobs, desc="eval_photos"):
        row, outputs = run_job(model, args, name, kind, truth, task)
        rows.append(row)
        if size == args.sizes[0] and name in (rows[0]["image"], f"scene0") and len(examples) < 8:
            examples.append((f"{name} {task}", truth, outputs))
    table = summarize(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / "eval.json") as tmp:
        tmp.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "table": table, "jobs": rows,
                                   "wall_seconds": time.time() - start}, indent=1) + "\n")
    misses = target_misses(rows)
    text = table_text(table) + f"\nTargets missed on {len(misses)} of {len(rows)} jobs\n" + \
        "".join(f"- {m}\n" for m in misses)
    with atomic_path(args.out / "table.md") as tmp:
        tmp.write_text(text)
    print(text)
    print(figure(examples, args.out / "examples.png"))
    return table


if __name__ == "__main__":
    main()
    sys.exit(0)
