"""Time and peak memory of ``INFDModel.render_image`` ("exact" vs "official") at growing output sizes.

Usage::

    python recipes/bench_render.py                                  # shipped model, 512..4096, both modes
    python recipes/bench_render.py --model tests/fixtures/tiny_official.pth
    python recipes/bench_render.py --model random --sizes 512 1024 --local      # quick run, no checkpoint
    python recipes/bench_render.py --sizes 512 1024 2048 --tile 128 --modes exact --json bench.json

For each size and mode one render of the full canvas (``--tile``, default 256; pad 8) of a field
``phi = decode(random latent)`` is timed, and its peak memory measured, in one process:

* **CPU**: peak resident-set growth during the call. ``VmHWM`` is reset before it (``echo 5 >
  /proc/self/clear_refs``, Linux) and read after it; a thread also samples ``VmRSS`` every 5 ms, which is the
  only measurement where the reset is not available. glibc's mmap threshold is fixed at 128 KiB for the
  run (``mallopt``; ``--default-malloc`` keeps the adaptive one) so that freed tensors leave the RSS at once,
  and its free heap is trimmed before each call: otherwise the RSS includes allocator slack, which grew with
  the image size (about 100 MB at 512 to 185 MB at 1024 for the tiny model, against a flat ~55 MB of live
  memory with the fixed threshold).
* **CUDA**: ``torch.cuda.max_memory_allocated`` minus what was allocated before the call.

``peak MB`` is the memory beyond the returned output buffer (B x 3 x H x W floats, listed separately as
``out MB``), i.e. the working memory the tiling is meant to bound. ``t x``, ``mem x`` and ``px x`` are the time,
working memory and pixel count relative to the 512 row of the same mode (the smallest size when 512 is not
benchmarked): tiling should give ``t x`` about ``px x`` and ``mem x`` about 1.

``--model default`` falls back to a small random model (latent 3x8x8, field 32x32x32, renderer 32 hidden
channels, like the tiny test fixture) when the shipped model is missing, and says so; ``--model random``
asks for it directly. ``--local`` also benchmarks a random model whose renderer has no GroupNorm
(``RendererConfig(normalize=False)``), which renders in one pass in both modes.

Runtime, measured on the 2-core development CPU with the tiny fixture (``tests/fixtures/tiny_official.pth``),
``--threads 1``, while other jobs kept the load average at 5-8: the full default run took about 12 minutes
(``--local`` adds 3.5); the 4096x4096 "exact" render alone 461 s, about 7.7 minutes (it streams 6 passes over
the tiles: one per GroupNorm of the renderer for its statistics, then the output), "official" at 4096 54 s.
On a busy machine ``--threads 1`` was 2.5x faster than torch's default of 2 threads. Use
``--sizes 512 1024`` for a quick look (about 1 minute).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import torch
from tqdm.auto import tqdm

from infd_solve.io import atomic_path, refuse_overwriting_inputs
from infd_solve.models import CheckpointError, INFDModel, load_model
from infd_solve.profiling import MB, PeakMemory, small_random_model, synchronize, use_mmap_for_tensors
from infd_solve.rendering import RENDER_MODES

PROG = "bench_render.py"
RANDOM = "random"
REFERENCE_SIZE = 512


# ------------------------------------------------------------------------------------------------- models
def describe(model: INFDModel) -> str:
    r = model.config.renderer
    kind = "GroupNorm (normalizing)" if r.normalize else "local (no norm)"
    return (f"latent {'x'.join(map(str, model.config.z_shape))}, renderer {kind}: {r.feature_channels} feature / "
            f"{r.hidden_channels} hidden channels, {r.num_res_blocks} res blocks, kernel {r.kernel_size}")


def make_field(model: INFDModel, seed: int) -> torch.Tensor:
    z = torch.randn((1, *model.config.z_shape), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return model.decode(z.to(model.device, model.dtype))


# ------------------------------------------------------------------------------------------------- bench
def bench_one(model: INFDModel, phi: torch.Tensor, size: int, mode: str, tile: int, pad: int, repeat: int,
              progress: bool) -> dict:
    times, peaks = [], []
    method = ""
    for _ in range(repeat):
        with PeakMemory(phi.device) as mem:
            synchronize(phi.device)
            t0 = time.perf_counter()
            out = model.render_image(phi, size, tile=tile, pad=pad, mode=mode, progress=progress)
            synchronize(phi.device)
            times.append(time.perf_counter() - t0)
        out_bytes = out.numel() * out.element_size()
        if not torch.isfinite(out).all():
            raise RuntimeError(f"render {size} {mode} produced NaN/inf")
        del out
        peaks.append(mem.peak)
        method = mem.method
    peak = min(peaks)
    return {"size": size, "mode": mode, "seconds": min(times), "peak_mb": max(0, peak - out_bytes) / MB,
            "out_mb": out_bytes / MB, "total_peak_mb": peak / MB, "pixels": size * size, "memory_method": method}


def add_ratios(rows: list[dict]) -> int:
    """Ratios relative to the REFERENCE_SIZE row of the same mode (or the smallest size); returns that size."""
    sizes = sorted({r["size"] for r in rows})
    ref_size = REFERENCE_SIZE if REFERENCE_SIZE in sizes else sizes[0]
    for r in rows:
        ref = next(x for x in rows if x["mode"] == r["mode"] and x["size"] == ref_size)
        r["time_ratio"] = r["seconds"] / ref["seconds"] if ref["seconds"] > 0 else math.nan
        r["mem_ratio"] = r["peak_mb"] / ref["peak_mb"] if ref["peak_mb"] > 0 else math.nan
        r["pixel_ratio"] = r["pixels"] / ref["pixels"]
    return ref_size


HEADER = (f"{'size':>6}  {'mode':<8}  {'seconds':>9}  {'peak MB':>9}  {'out MB':>8}  {'t x':>7}  {'mem x':>6}  "
          f"{'px x':>6}")


def format_row(r: dict) -> str:
    ratios = (f"  {r['time_ratio']:>7.2f}  {r['mem_ratio']:>6.2f}  {r['pixel_ratio']:>6.2f}" if "time_ratio" in r
              else "")
    return f"{r['size']:>6}  {r['mode']:<8}  {r['seconds']:>9.2f}  {r['peak_mb']:>9.1f}  {r['out_mb']:>8.1f}{ratios}"


def bench_section(name: str, model: INFDModel, args, device: torch.device) -> dict:
    model = model.to(device).eval()
    phi = make_field(model, args.seed)
    print(f"\n== {name}: {describe(model)}; phi {tuple(phi.shape)} on {device}", flush=True)
    with torch.inference_mode():  # warm-up (first-call allocations and kernel selection are not timed)
        for mode in args.modes:
            model.render_image(phi, min(args.tile, min(args.sizes)), tile=args.tile, pad=args.pad, mode=mode)
    rows = []
    runs = [(s, m) for s in args.sizes for m in args.modes]
    bar = tqdm(runs, desc=name, unit="render", disable=args.no_progress)
    print(HEADER, flush=True)
    for size, mode in bar:
        bar.set_postfix_str(f"{size}x{size} {mode}")
        with torch.inference_mode():
            row = bench_one(model, phi, size, mode, args.tile, args.pad, args.repeat,
                            progress=not args.no_progress and size >= 2048)
        rows.append(row)
        bar.write(format_row(row))
    bar.close()
    ref_size = add_ratios(rows)
    print(f"-- {name}: all rows, ratios relative to the {ref_size} row of the same mode", flush=True)
    print(HEADER)
    for r in sorted(rows, key=lambda r: (r["mode"], r["size"])):
        print(format_row(r))
    sys.stdout.flush()
    return {"name": name, "model": describe(model), "phi_shape": list(phi.shape), "reference_size": ref_size,
            "memory_method": rows[0]["memory_method"] if rows else "", "rows": rows}


# ------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default",
                   help='"default" (falls back to a random model if missing), "random", a saved model directory '
                        'or an official .pth')
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096], metavar="S",
                   help="square output sizes (default 512 1024 2048 4096)")
    p.add_argument("--modes", nargs="+", choices=RENDER_MODES, default=list(RENDER_MODES),
                   help="render_image modes (default: exact official)")
    p.add_argument("--tile", type=int, default=256, help="tile size (default 256)")
    p.add_argument("--pad", type=int, default=8, help="official-mode tile padding (default 8)")
    p.add_argument("--repeat", type=int, default=1, help="renders per cell; the fastest/smallest is kept (default 1)")
    p.add_argument("--local", action="store_true",
                   help="also benchmark a random model with a local renderer (RendererConfig normalize=False)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random latent (and random models)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; 1 gives steadier times on a busy machine)")
    p.add_argument("--default-malloc", action="store_true",
                   help="CPU: keep glibc's adaptive mmap threshold (peak RSS then includes allocator slack)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON (atomically)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _fail(message: str, code: int = 2):
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _json_safe(value):
    """NaN/inf (a ratio to a zero reference) -> null, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def run(args) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    mmap = device.type == "cpu" and not args.default_malloc and use_mmap_for_tensors()
    inputs = []
    if args.model == RANDOM:
        model, name = small_random_model(normalize=True, seed=args.seed), "random model"
        print("model: small random model (--model random)")
    else:
        try:
            model = load_model(args.model)
            name = f"model {args.model}"
            if args.model != "default":
                inputs.append(args.model)
            print(f"model: {args.model}")
        except FileNotFoundError as e:
            if args.model != "default":
                raise
            print(f"model: the default model is missing ({str(e).splitlines()[0]})\n"
                  "       falling back to a small random model with the tiny fixture's shapes; timings show the "
                  "tiling's scaling, not the shipped model's speed")
            model, name = small_random_model(normalize=True, seed=args.seed), "random model"
    if args.json:
        refuse_overwriting_inputs([args.json], inputs)
    print(f"device: {device} ({platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads); tile {args.tile}, pad {args.pad}; sizes {args.sizes}; "
          f"modes {args.modes}; load average {_load()}")
    sections = [bench_section(name, model, args, device)]
    if args.local:
        local = small_random_model(normalize=False, seed=args.seed)
        sections.append(bench_section("random local-renderer model", local, args, device))
    method = sections[0]["memory_method"] + ("; glibc mmap threshold fixed at 128 KiB" if mmap else "")
    print(f"\nmemory: {method}; 'peak MB' excludes the output buffer ('out MB')")
    print(f"load average at the end: {_load()} (other processes competing for the CPU inflate the times)")
    result = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "memory_method": method,
              "tile": args.tile, "pad": args.pad, "sections": sections}
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(_json_safe(result), indent=2, allow_nan=False) + "\n")
        print(f"wrote {args.json}")
    return result


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the results. Exits with code 2 on a bad model/argument, 130 on Ctrl-C."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, values in (("--sizes", args.sizes), ("--tile", [args.tile]), ("--repeat", [args.repeat]),
                         ("--threads", [1 if args.threads is None else args.threads])):
        if any(v <= 0 for v in values):
            parser.error(f"{name} must be positive, got {values}")
    if args.pad < 0:
        parser.error(f"--pad must be >= 0, got {args.pad}")
    args.sizes = list(dict.fromkeys(args.sizes))
    args.modes = list(dict.fromkeys(args.modes))
    threads = torch.get_num_threads()
    try:
        return run(args)
    except (FileNotFoundError, ValueError, CheckpointError) as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    finally:
        torch.set_num_threads(threads)  # main() may be called in-process (tests)


if __name__ == "__main__":
    main()
