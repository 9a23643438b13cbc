"""Benchmark one guided sampling step with three CLIP boxes, across canvas sizes (ratios from one run).

    python recipes/bench_guidance.py                         # default model + CLIP, canvases 512..4096
    python recipes/bench_guidance.py --sizes 512 1024 --repeat 2

Methods, per canvas size:
  region    each box rendered alone at CLIP's input size (what infd-solve does), DPS guidance
  region-x0 the same with x0 guidance (no backpropagation through the denoiser)
  baseline  the whole canvas rendered at full resolution (with gradients), each box cropped and resized to
            CLIP's input size: what a pixel-space pipeline must do. Skipped where its estimated activation
            memory exceeds --max-baseline-gb (reported as skipped, with the estimate).
Also printed: baseline / region time and peak memory per size, how region time grows with the canvas, dps / x0
time; the denoiser's backward share, which bounds what x0 guidance can save, and its (forward + backward) /
forward, which bounds it even with free decoding, rendering and CLIP; the decoder's share of a step, which
bounds what decoding only the latent window under each box could save (an experiment measured slower than
full decoding on both the default model and the official FFHQ architecture; see docs/architecture.md).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import infd_solve
from infd_solve import cli
from infd_solve.clip import load_clip
from infd_solve.constraints import ClipBox
from infd_solve.io import atomic_path
from infd_solve.profiling import (MB, PeakMemory, official_architecture, random_clip, synchronize,
                                  use_mmap_for_tensors)
from infd_solve.samplers import Problem, get_sampler

PROG = "bench_guidance.py"
BOXES = {"clouds": (0.05, 0.02, 0.6, 0.35), "snowy mountains": (0.3, 0.3, 0.95, 0.65), "a lake": (0.0, 0.7, 0.7, 1.0)}


def crop_canvas(model, size):
    """Patches the way a pixel-space pipeline gets them: render the whole canvas (differentiably) once, crop
    each box, resize it to the constraint's grid."""

    def patches(phi, constraints):
        canvas = model.render(phi, size)
        out = []
        for c in constraints:
            left, top, right, bottom = c.box
            crop = canvas[..., round(top * size): round(bottom * size), round(left * size): round(right * size)]
            out.append(F.interpolate(crop, size=c.size, mode="bilinear", antialias=True, align_corners=False))
        return out

    return patches


def time_step(model, objective, family, repeat):
    """Seconds and peak MB of one guided step of the sampler ``family`` ("dps" or "mpgd")."""
    x = torch.randn(1, *model.config.z_shape, generator=torch.Generator().manual_seed(0)).to(model.device)
    step = Problem(model.denoise, model.alphas_cumprod, [500], objective)
    times = []
    with PeakMemory(model.device) as memory:
        for _ in range(repeat):
            start = time.perf_counter()
            get_sampler(family).function(step, x, eta=0.0, progress=False)
            times.append(time.perf_counter() - start)
    return statistics.median(times), memory.peak / MB


def decoder_seconds(model, repeat):
    """Seconds of one decoder forward + backward pass (part of every guided step)."""
    z = torch.randn(1, *model.config.z_shape, device=model.device).requires_grad_(True)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        model.decode(z).square().mean().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def denoiser_seconds(model, repeat):
    """Seconds of one denoiser forward without gradients (x0 guidance) and with its backward pass (DPS)."""
    x, t = torch.randn(1, *model.config.z_shape, device=model.device), torch.tensor([500], device=model.device)
    times = {"forward": [], "forward + backward": []}
    for _ in range(repeat):
        start = time.perf_counter()
        with torch.no_grad():
            model.denoise(x, t)
        times["forward"].append(time.perf_counter() - start)
        start = time.perf_counter()
        model.denoise(x.clone().requires_grad_(True), t).square().mean().backward()
        times["forward + backward"].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def ceiling_text(denoiser) -> str:
    """The most x0 could gain even if decoding, rendering and CLIP cost nothing: (forward + backward) / forward
    of the denoiser. The backward pass computes input gradients only (the weights are frozen), about one
    forward, so the ceiling is about 2x whatever the model."""
    ceiling = denoiser["forward + backward"] / denoiser["forward"]
    return (f"ceiling with a free decoder, renderer and CLIP: denoiser (forward + backward) / forward = "
            f"{ceiling:.2f}x")


def x0_on_architecture(model, constraints, repeat):
    """Seconds per guided step, DPS and x0, on ``model`` (one canvas size: neither depends on it), after one
    untimed step (a fresh large model's first step also pays for allocating its buffers)."""
    objective = infd_solve.Solver(model).objective(constraints)
    time_step(model, objective, "mpgd", 1)
    timed = {mode: time_step(model, objective, family, repeat)[0] for mode, family in (("dps", "dps"), ("x0", "mpgd"))}
    return {**timed,
            "denoiser_seconds": denoiser_seconds(model, repeat)}


def time_solves(model, constraints, sizes, batch_sizes, args):
    """Seconds per DPS step and peak memory of whole solves (the library's own loop), per canvas and batch."""
    device = model.device
    solver = infd_solve.Solver(model, steps=args.steps, refine_steps=0, progress=False, autocast=args.autocast,
                               checkpoint_decoder=args.checkpoint_decoder, compile=args.compile)
    rows = []
    for size in sizes:
        boxed = [ClipBox(c.prompt, c.box, clip=c.clip, canvas=(size, size)) for c in constraints]
        for batch in batch_sizes:
            solver.solve(boxed, batch_size=batch, seed=0)  # warm-up: allocation, compilation
            times = []
            with PeakMemory(device) as memory:
                for _ in range(args.repeat):
                    synchronize(device)
                    start = time.perf_counter()
                    solver.solve(boxed, batch_size=batch, seed=0)
                    synchronize(device)
                    times.append((time.perf_counter() - start) / args.steps)
            rows.append({"size": size, "batch": batch, "seconds_per_step": statistics.median(times),
                         "seconds_per_sample_step": statistics.median(times) / batch, "peak_mb": memory.peak / MB})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nwhole solves, {args.steps} DPS steps, {len(constraints)} CLIP boxes, device {device}, "
          f"autocast {args.autocast}, checkpoint_decoder {args.checkpoint_decoder}, compile {args.compile}")
    print(f"{'size':>6} {'batch':>6} {'s/step':>9} {'s/sample/step':>14} {'peak MB':>9} {'MB per extra sample':>20}")
    for r in rows:
        first = next(x for x in rows if x["size"] == r["size"])
        extra = (r["peak_mb"] - first["peak_mb"]) / (r["batch"] - first["batch"]) if r["batch"] > first["batch"] \
            else float("nan")
        print(f"{r['size']:>6} {r['batch']:>6} {r['seconds_per_step']:>9.4f} {r['seconds_per_sample_step']:>14.4f} "
              f"{r['peak_mb']:>9.1f} {extra:>20.1f}")
    print(f"memory: {memory.method}")
    return rows


def build_parser(prog: str = PROG):
    p = cli.new_parser(prog, __doc__)
    p.add_argument("--model", default="default")
    p.add_argument("--clip", default="default")
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--max-baseline-gb", type=float, default=12.0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path)
    p.add_argument("--x0-architecture", type=Path, nargs="?", const=Path("tests/fixtures/ffhq_keys.txt"),
                   help="also time dps vs x0 on an official architecture with random weights (default: the "
                        "real FFHQ model's key list, tests/fixtures/ffhq_keys.txt); slow on a CPU")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--official", type=Path, nargs="?", const=Path("tests/fixtures/ffhq_keys.txt"),
                   help="time whole solves on an official architecture with random weights (default: the real "
                        "FFHQ model's key list) and a random ViT-B-32 CLIP, per canvas and --batch-sizes; nothing "
                        "is downloaded")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1], help="for --official (default 1)")
    p.add_argument("--steps", type=int, default=10, help="DPS steps per timed solve, for --official")
    p.add_argument("--autocast", choices=["bfloat16", "float16"], default=None)
    p.add_argument("--checkpoint-decoder", action="store_true")
    p.add_argument("--compile", action="store_true")
    return p


def run(parser, args):
    device = cli.resolve_device(args.device)  # before any work: a bad device is a one-line error
    if args.threads:
        torch.set_num_threads(args.threads)
    args.autocast = getattr(torch, args.autocast) if args.autocast else None
    return time_official_solves(args, device) if args.official else time_guided_steps(args, device)


def time_official_solves(args, device):
    """--official: whole solves on the official architecture with random weights, per canvas and batch."""
    model = official_architecture(args.official).to(device)
    clip = random_clip("ViT-B-32", device)
    constraints = [ClipBox(prompt, box, clip=clip) for prompt, box in BOXES.items()]
    rows = time_solves(model, constraints, args.sizes, args.batch_sizes, args)
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps({"official_solves": rows}, indent=2))
    return rows, {}


def time_guided_steps(args, device):
    """One guided step per method and canvas size on the model and CLIP of the flags, with the ratios."""
    use_mmap_for_tensors()
    model = infd_solve.load_model(args.model, device=device).requires_grad_(False)
    clip = load_clip(args.clip, device=device)
    constraints = [ClipBox(prompt, box, clip=clip) for prompt, box in BOXES.items()]
    solver = infd_solve.Solver(model, progress=False)
    hidden = model.config.renderer.hidden_channels
    rows = []
    for size in args.sizes:
        for method, mode in (("region", "dps"), ("region-x0", "mpgd")):
            seconds, peak = time_step(model, solver.objective(constraints), mode, args.repeat)
            rows.append({"size": size, "method": method, "seconds": seconds, "peak_mb": peak})
        # ~10 live float32 maps of `hidden` channels per pixel for the renderer's backward pass
        estimate_gb = size * size * hidden * 4 * 10 / 2**30
        if estimate_gb > args.max_baseline_gb:
            rows.append({"size": size, "method": "baseline", "seconds": None, "peak_mb": None,
                         "note": f"skipped: ~{estimate_gb:.0f} GB estimated"})
        else:
            seconds, peak = time_step(model, solver.objective(constraints, crop_canvas(model, size)), "dps",
                                      max(1, args.repeat // 2))
            rows.append({"size": size, "method": "baseline", "seconds": seconds, "peak_mb": peak})
        print(json.dumps(rows[-3:]), flush=True)

    share = decoder_seconds(model, args.repeat)
    denoiser = denoiser_seconds(model, args.repeat)
    region_ref = {r["size"]: r for r in rows if r["method"] == "region"}
    print(f"\n{'size':>6} {'method':<10} {'s/step':>9} {'peak MB':>9} {'time vs region':>15} {'mem vs region':>14}")
    for r in rows:
        ref = region_ref[r["size"]]
        if r["seconds"] is None:
            print(f"{r['size']:>6} {r['method']:<10} {r['note']:>35}")
            continue
        print(f"{r['size']:>6} {r['method']:<10} {r['seconds']:>9.3f} {r['peak_mb']:>9.1f} "
              f"{r['seconds'] / ref['seconds']:>15.2f} {r['peak_mb'] / max(ref['peak_mb'], 1e-9):>14.2f}")

    def get(size, method):
        return next((r for r in rows if r["size"] == size and r["method"] == method and r["seconds"]), None)

    ratios = {}
    for size in args.sizes:
        region, base = get(size, "region"), get(size, "baseline")
        if region and base:
            ratios[f"{size}: baseline / region time"] = base["seconds"] / region["seconds"]
            ratios[f"{size}: baseline / region peak memory"] = base["peak_mb"] / max(region["peak_mb"], 1e-9)
    small, large = get(min(args.sizes), "region"), get(max(args.sizes), "region")
    ratios[f"region time {max(args.sizes)} / {min(args.sizes)}"] = large["seconds"] / small["seconds"]
    ratios["dps / x0 time (median over sizes)"] = statistics.median(
        get(s, "region")["seconds"] / get(s, "region-x0")["seconds"] for s in args.sizes)
    print()
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    region_mean = statistics.mean(r["seconds"] for r in rows if r["method"] == "region")
    saved = denoiser["forward + backward"] - denoiser["forward"]
    print(f"\nx0 vs dps: x0 saves only the denoiser's backward pass ({saved:.4f} s; denoiser forward "
          f"{denoiser['forward']:.4f} s, with backward {denoiser['forward + backward']:.4f} s) of a "
          f"{region_mean:.3f} s DPS step, so x0 can be at most "
          f"{region_mean / max(region_mean - saved, 1e-9):.2f}x faster on this model: "
          f"the rest (decoder, renderer, CLIP, forward and backward) is the same in both.\n  {ceiling_text(denoiser)}")
    print(f"the decoder (forward + backward) takes {share:.4f} s of a {region_mean:.3f} s DPS step "
          f"({100 * share / region_mean:.1f}%): decoding only the latent window under each box could save at most "
          f"{region_mean / max(region_mean - share, 1e-9):.2f}x")
    official = None
    if args.x0_architecture:
        official = x0_on_architecture(official_architecture(args.x0_architecture), constraints, 1)
        print(f"\nx0 vs dps on the architecture of {args.x0_architecture} (random weights, 3 boxes): "
              f"dps {official['dps']:.2f} s/step, x0 {official['x0']:.2f} s/step: "
              f"{official['dps'] / official['x0']:.2f}x"
              f"\n  {ceiling_text(official['denoiser_seconds'])}")
    if args.json:
        with atomic_path(args.json) as tmp:
            report = {"rows": rows, "ratios": ratios, "decoder_seconds": share, "denoiser_seconds": denoiser,
                      "x0_vs_dps_official_architecture": official}
            tmp.write_text(json.dumps(report, indent=2))
    return rows, ratios


def run_benchmark(argv=None, prog: str = PROG):
    """The benchmark in-process: returns ``(rows, ratios)``; bad input (a device this machine lacks, a missing
    file) ends with a one-line error and ``SystemExit(2)``, Ctrl-C with ``SystemExit(130)``."""
    return cli.run_command(build_parser, run, argv, prog)


def main(argv=None, prog: str = PROG) -> int:
    """The program: returns its exit status (0 done, 2 bad input, 130 Ctrl-C)."""
    return cli.exit_status(run_benchmark, argv, prog)


if __name__ == "__main__":
    sys.exit(main())
