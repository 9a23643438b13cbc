"""Peak memory and time of ``Result.save`` (streamed PNG) across canvas sizes, ratios from one run.

    python recipes/bench_save.py                      # 1024 .. 8192
    python recipes/bench_save.py --sizes 1024 16384   # 16384^2 takes a while on a CPU

A PNG is rendered and compressed one band of tiles at a time, so peak memory should stay flat while the
canvas grows; the raw image size is printed beside it for comparison.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import infd_solve
from infd_solve.profiling import MB, PeakMemory, use_mmap_for_tensors


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    use_mmap_for_tensors()
    model = infd_solve.load_model(args.model)
    result = infd_solve.Solver(model, steps=2, progress=False).solve([], seed=0)  # any field will do
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            start = time.perf_counter()
            with PeakMemory(torch.device("cpu")) as memory:
                (path,) = result.save(Path(tmp) / f"canvas_{size}.png", size, tile=args.tile)
            rows.append({"size": size, "seconds": time.perf_counter() - start, "peak_mb": memory.peak / MB,
                         "raw_image_mb": 3 * size * size / MB, "file_mb": path.stat().st_size / MB})
            path.unlink()
            print(rows[-1], flush=True)
    base = rows[0]
    print(f"\n{'size':>6} {'seconds':>9} {'peak MB':>9} {'raw image MB':>13} {'file MB':>9} {'peak vs first':>14}")
    for r in rows:
        print(f"{r['size']:>6} {r['seconds']:>9.1f} {r['peak_mb']:>9.1f} {r['raw_image_mb']:>13.1f} "
              f"{r['file_mb']:>9.1f} {r['peak_mb'] / max(base['peak_mb'], 1e-9):>14.2f}")
    print(f"memory: {memory.method}")
    return rows


if __name__ == "__main__":
    main()
    sys.exit(0)
