"""The standard benchmark of zero-shot inverse solvers (the protocol of DPS, Chung et al. 2023, and its
successors), run as jobs of the batch runner (``infd_solve/batch``).

    python recipes/eval_inverse.py                          # 8 held-out scenes per task, 50 steps
    python recipes/eval_inverse.py --scenes 2 --steps 10    # a quick look
    python recipes/eval_inverse.py --images DIR             # your images: centre-cropped, resized to --size
    torchrun --standalone --nproc_per_node 2 recipes/eval_inverse.py --device cpu   # solves in 2 processes

Tasks, at ``--size`` 256 (sizes scale with it), all with Gaussian observation noise of sigma ``--noise`` 0.05
on [-1, 1] (drawn from each job's seed, clamped to [-1, 1]):

- ``sr4``: super-resolution x4, the truth area-averaged to 64x64;
- ``box``: box inpainting, a 128x128 box unknown at a seeded random position at least 16 px from the borders;
- ``random``: random inpainting, 70 % of the pixels unknown (all channels), seeded;
- ``gaussian``: Gaussian deblurring, a 61x61 kernel of sigma 3.0;
- ``motion``: motion deblurring, linear motion of 31 px at a seeded angle per scene on a 61x61 support
  (``motion_kernel`` in ``constraints/blur_observation.py``).

Images: held-out procedural scenes (``infd_solve.data``, seeds from ``TEST_SEED_OFFSET + 30000``) rendered at
``--size``, their ground truth, or the first ``--scenes`` images of ``--images``.

Methods, in one table: ``classical`` (bicubic upsampling; a harmonic fill of the holes; Wiener deconvolution:
``infd_solve.baselines``), ``prior`` (the unguided sample from the same seed), and for each ``--samplers``
family at equal denoiser evaluations (``--steps``), ``FAMILY, no refinement`` (its sample, made consistent with
the observation) and ``FAMILY`` (the same solve after its refinement steps; the library's default).

Metrics against the truth on the 8-bit outputs: PSNR, SSIM (window 11, sigma 1.5), LPIPS when its backbone
file is on disk (``infd_solve/losses.py``; the table says when it is not), patch FD (Fréchet distance in the
domain CLIP's image features between 64x64 crops, stride 32, of the outputs and of the truths, as in
``eval_default.py``; with few images it is biased upwards: compare methods, not runs of other sizes), and
measurement consistency (PSNR of the output seen through the task's operator vs the observation, on the
observation's grid: the constraint's ``score``). Seconds are the solve's wall time per image.

Writes ``OUT/table.md``, ``table.csv``, ``eval.json`` and ``examples_<task>.png`` (truth, observation, each
method), beside the batch's ``jobs.jsonl``, ``jobs/`` and ``summary.*``; prints the wall time. Run it again
to resume: finished jobs are kept.
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

TASKS = ("sr4", "box", "random", "gaussian", "motion")
BASELINES = ("classical", "prior")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
PROG = "eval_inverse.py"


def build_parser():
    from infd_solve import cli

    p = cli.Parser(prog=PROG, description=__doc__.split("\n\n")[0],
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=None, help="folder of images (default: held-out procedural scenes)")
    p.add_argument("--scenes", type=int, default=8, help="images per task (default 8)")
    p.add_argument("--size", type=int, default=256, help="image side (default 256)")
    p.add_argument("--steps", type=int, default=50,
                   help="denoiser evaluations per solve (default 50): the steps of each sampler family, divided by "
                        "its evaluations per step (DAPS: 25 levels of 2)")
    p.add_argument("--samplers", nargs="+", default=["dps"],
                   help="sampler families to compare, at equal denoiser evaluations (default: dps)")
    p.add_argument("--refine-steps", type=int, default=None, help="refinement steps (default: the library's, 100)")
    p.add_argument("--noise", type=float, default=0.05, help="observation noise sigma on [-1, 1] (default 0.05)")
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--seed", type=int, default=0, help="base seed: scene i uses seed + i (default 0)")
    p.add_argument("--model", default="default")
    p.add_argument("--clip", default="default", help="CLIP for patch FD (default: the shipped domain CLIP)")
    p.add_argument("--lpips-net", choices=("vgg", "alex"), default="vgg")
    p.add_argument("--examples", type=int, default=4, help="scenes shown per task figure (default 4)")
    p.add_argument("--out", type=Path, default=Path("outputs/eval_inverse"))
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--no-progress", action="store_true")
    return p


# ------------------------------------------------------------------------------------------------ jobs
def write_truths(args) -> list[str]:
    """The truth images as PNGs under OUT/data; their paths relative to OUT."""
    from infd_solve.data import TEST_SEED_OFFSET, scene_tensor
    from infd_solve.io import center_square, load_image, save_image

    names = []
    if args.images is None:
        images = (scene_tensor(TEST_SEED_OFFSET + 30_000 + args.seed + i, args.size) for i in range(args.scenes))
    else:
        if not args.images.is_dir():
            raise ValueError(f"--images {args.images}: not a folder")
        files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[: args.scenes]
        if not files:
            raise ValueError(f"--images {args.images}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        if len(files) < args.scenes:
            print(f"{PROG}: note: {args.images} has {len(files)} images, fewer than --scenes {args.scenes}",
                  file=sys.stderr)
        images = (F.interpolate(center_square(load_image(f, f.name))[0], size=args.size, mode="bicubic",
                                antialias=True, align_corners=False).clamp(-1, 1) for f in files)
    for i, image in enumerate(images):
        name = f"data/truth_{i:02d}.png"
        save_image(image[0], args.out / name)
        names.append(name)
    return names


def task_fields(task: str, index: int, args) -> dict:
    """The job fields of ``task`` for scene ``index`` (sizes in pixels at ``--size``, scaled from 256)."""
    size, seed = args.size, args.seed + index
    if task == "sr4":
        return {"task": "sr", "factor": 4}
    if task == "box":  # DPS's box: half the side, at a random position a margin away from the borders
        side, margin = size // 2, round(16 * size / 256)
        top, left = np.random.default_rng([args.seed, index]).integers(margin, size - side - margin + 1, size=2)
        return {"task": "inpaint", "hole": [left / size, top / size, (left + side) / size, (top + side) / size]}
    if task == "random":
        return {"task": "inpaint", "missing": 0.7}
    kernel_side = 2 * round(30 * size / 256) + 1
    if task == "gaussian":
        return {"task": "deblur", "kernel": {"type": "gaussian", "size": kernel_side, "sigma": 3.0 * size / 256}}
    return {"task": "deblur", "kernel": {"type": "motion", "size": kernel_side, "length": 31 * size / 256,
                                         "seed": seed}}


def methods(args) -> list[str]:
    """The baselines, then each sampler family (a guided job whose ``sampler`` is that family)."""
    return [*BASELINES, *args.samplers]


def rows_of(args) -> list[tuple[str, str, str | None]]:
    """``(row name, method, part of its record)``: each family appears before and after its refinement."""
    out = [(m, m, None) for m in BASELINES]
    for family in args.samplers:
        out += [(f"{family}, no refinement", family, "unrefined"), (family, family, None)]
    return out


def _steps(family: str, evaluations: int) -> int:
    """The steps of ``family`` that spend ``evaluations`` denoiser calls, as its default steps spend the
    solver's budget."""
    from infd_solve.options import DEFAULT_STEPS
    from infd_solve.samplers import get_sampler

    return max(1, evaluations * get_sampler(family).default_steps // DEFAULT_STEPS)


def write_jobs(args, truths: list[str]) -> Path:
    from infd_solve.io import atomic_path

    lines = []
    for task in args.tasks:
        for i, truth in enumerate(truths):
            for method in methods(args):
                job = {"id": f"{task}-{method}-{i:02d}", "truth": truth, **task_fields(task, i, args),
                       "noise_sigma": args.noise, "seed": args.seed + i, "steps": args.steps}
                if method in BASELINES:
                    job["method"] = method
                else:
                    job |= {"sampler": method, "steps": _steps(method, args.steps), "save_unrefined": True}
                    if args.refine_steps is not None:
                        job["refine_steps"] = args.refine_steps
                lines.append(json.dumps(job))
    path = args.out / "jobs.jsonl"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------------------- metrics
@torch.no_grad()
def evaluate(args, jobs, records: dict, device) -> tuple[list[dict], dict]:
    """One row per (task, method): means of the per-image measures, LPIPS, patch FD."""
    from infd_solve.clip import load_clip
    from infd_solve.io import load_image
    from infd_solve.losses import load_lpips
    from infd_solve.metrics import frechet_distance, patches

    notes = {}
    try:
        lpips = load_lpips(args.lpips_net, device=device)
        notes["lpips"] = f"LPIPS ({args.lpips_net})"
    except FileNotFoundError as e:
        lpips = None
        notes["lpips"] = f"LPIPS not measured: {str(e).splitlines()[0]}"
    clip = load_clip(args.clip, device=device)

    def features(images):
        return torch.cat([clip.encode_image(patches(x).to(device)) for x in images]).cpu()

    by_id = {job.id: job for job in jobs}
    rows = []
    for task in args.tasks:
        truths = {}
        for method in methods(args):
            for i in range(args.scenes):
                job = by_id.get(f"{task}-{method}-{i:02d}")
                if job is not None:
                    truths[i] = load_image(args.out / job.spec["truth"])
        if not truths:
            continue
        real = features(truths.values())
        for row, method, part in rows_of(args):
            output = "unrefined.png" if part else "output.png"
            values = {"psnr": [], "ssim": [], "lpips": [], "consistency": [], "seconds": []}
            outputs = []
            for i, truth in truths.items():
                record = records.get(f"{task}-{method}-{i:02d}")
                if not record or record.get("status") != "done":
                    continue
                source = record[part] if part else record
                values["psnr"] += source["metrics"]["psnr"]
                values["ssim"] += source["metrics"]["ssim"]
                (constraint,) = source["report"].values()
                values["consistency"] += constraint["psnr"]
                seconds = record["seconds"]
                values["seconds"].append(seconds.get("sampling", seconds["solve"]) if part else seconds["solve"])
                image = load_image(args.out / "jobs" / record["id"] / output)
                outputs.append(image)
                if lpips is not None:
                    values["lpips"].append(float(lpips(image.to(device), truth.to(device)).flatten()[0]))
            if not outputs:
                continue
            crops = features(outputs)
            enough = min(len(crops), len(real)) >= 2  # a Gaussian needs two samples
            if not enough:
                notes["patch FD"] = "patch FD not measured: fewer than 2 crops of 64x64 (more --scenes or a larger --size)"
            rows.append({"task": task, "method": row, "images": len(outputs),
                         **{k: float(np.mean(v)) if v else None for k, v in values.items()},
                         "patch FD": frechet_distance(crops, real) if enough else None})
    return rows, notes


def figures(args, records: dict) -> list[Path]:
    from infd_solve.viz import image_rows

    paths = []
    rows_shown = rows_of(args)
    titles = ["truth", "observation", *(row for row, _, _ in rows_shown)]
    first = args.samplers[0]
    for task in args.tasks:
        rows = []
        for i in range(min(args.examples, args.scenes)):
            ids = {m: f"{task}-{m}-{i:02d}" for m in methods(args)}
            if not all(records.get(v, {}).get("status") == "done" for v in ids.values()):
                continue
            folder = {m: args.out / "jobs" / v for m, v in ids.items()}
            images = [args.out / records[ids[first]]["job"]["truth"], folder[first] / "observation.png"]
            images += [folder[method] / ("unrefined.png" if part else "output.png") for _, method, part in rows_shown]
            rows.append((f"scene {i}", images))
        if rows:
            paths.append(image_rows(rows, titles, args.out / f"examples_{task}.png"))
    return paths


def table_text(rows: list[dict], notes: dict) -> tuple[str, str]:
    """(Markdown, CSV) of the rows."""
    columns = [("task", "task"), ("method", "method"), ("PSNR (dB) ↑", "psnr"), ("SSIM ↑", "ssim"),
               ("LPIPS ↓", "lpips"), ("patch FD ↓", "patch FD"), ("consistency (dB) ↑", "consistency"),
               ("s / image", "seconds"), ("images", "images")]

    def cell(value, key):
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:.{3 if key in ('ssim', 'lpips') else 4 if key == 'patch FD' else 2}f}"
        return str(value)

    lines = ["| " + " | ".join(c for c, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k), k) for _, k in columns) + " |" for r in rows]
    csv_lines = [",".join(k for _, k in columns)]
    csv_lines += [",".join("" if r.get(k) is None else str(r.get(k)) for _, k in columns) for r in rows]
    return "\n".join(lines) + "\n", "\n".join(csv_lines) + "\n"


# ------------------------------------------------------------------------------------------------ main
def run(args, processes) -> list[dict] | None:
    from infd_solve import batch, cli, pretrained
    from infd_solve.io import atomic_path

    start = time.perf_counter()
    batch.set_determinism(args.threads)
    if processes.rank == 0:
        write_jobs(args, write_truths(args))
    processes.barrier()
    jobs = batch.read_jobs(args.out / "jobs.jsonl")
    device = batch.process_device(args.device, processes)
    model_file = cli.model_path(args.model)
    model = cli.load_sampling_model(model_file, device)
    name = args.model if args.model in pretrained.NAMES else str(model_file.resolve())
    runner = batch.Runner(model, model_name=name, rank=processes.rank, world_size=processes.world_size)
    batch.validate_jobs(jobs, runner)
    counts = batch.run_jobs(jobs, args.out, runner, processes, progress=not args.no_progress)
    print(f"rank {processes.rank}/{processes.world_size}: {counts}", file=sys.stderr, flush=True)
    processes.barrier()
    rows = batch.merge_summary(jobs, args.out, write=processes.rank == 0)
    if processes.rank != 0:
        return None
    failed = [r for r in rows if r.get("status") != "done"]
    if failed:
        print(f"{PROG}: note: {len(failed)} jobs did not finish (see {args.out / 'summary.md'}); the table leaves "
              "them out", file=sys.stderr)
    records = {job.id: json.loads((batch.job_dir(args.out, job) / batch.RECORD).read_text()) for job in jobs
               if (batch.job_dir(args.out, job) / batch.RECORD).is_file()}
    table, notes = evaluate(args, jobs, records, device)
    written = figures(args, records)
    wall = time.perf_counter() - start
    source = "held-out procedural scenes" if args.images is None else f"images of {args.images}"
    meta = (f"{args.scenes} {source} at {args.size}x{args.size} per task; noise sigma {args.noise}; {args.steps} "
            f"steps, refinement {args.refine_steps if args.refine_steps is not None else 'default (100)'} steps; "
            f"model {args.model}; device {model.device}, {processes.world_size} process(es) x {args.threads} "
            f"thread(s); {'; '.join(notes.values())}; wall time {wall:.0f} s (this run; finished jobs of earlier "
            "runs are reused)")
    markdown, csv_text = table_text(table, notes)
    with atomic_path(args.out / "table.md") as tmp:
        tmp.write_text(meta + "\n\n" + markdown)
    with atomic_path(args.out / "table.csv") as tmp:
        tmp.write_text(csv_text)
    with atomic_path(args.out / "eval.json") as tmp:
        tmp.write_text(json.dumps({"meta": meta, "wall_seconds": wall, "rows": table, "jobs": counts}, indent=2) + "\n")
    print("\n" + meta + "\n\n" + markdown)
    print(f"wrote {args.out / 'table.md'}, table.csv, eval.json and {len(written)} figures; wall time {wall:.0f} s")
    return table


def main(argv=None):
    from infd_solve import batch, cli

    with cli.user_errors(PROG):
        parser = build_parser()
        args = parser.parse_args(argv)
        for flag in ("scenes", "size", "steps", "threads"):
            if getattr(args, flag) <= 0:
                parser.error(f"--{flag} must be positive, got {getattr(args, flag)}")
        if args.size < 64:
            parser.error(f"--size must be at least 64 (the tasks' boxes and kernels scale with it), got {args.size}")
        if not 0 <= args.noise <= 1:
            parser.error(f"--noise must be in [0, 1], got {args.noise}")
        with batch.launch() as processes:
            return run(args, processes)


if __name__ == "__main__":
    from infd_solve.batch import interrupt_on_sigterm

    interrupt_on_sigterm()
    main()
