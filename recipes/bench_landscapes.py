"""Timing of the procedural landscape renderer (run with OMP_NUM_THREADS=1).

Prints the median wall time over ~20 renders of: a full 256x256 view, a 512x512
full view, and a 512x512 crop of an 8192x8192 view (must cost about the same).
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from infd_solve.data.landscapes import render_scene, sample_scene  # noqa: E402


def median_ms(scenes, box, size, repeats):
    """Median wall and CPU (this process only; robust on a shared machine) ms."""
    wall, cpu = [], []
    for i in range(repeats):
        sc = scenes[i % len(scenes)]
        t, c = time.perf_counter(), time.process_time()
        render_scene(sc, box, size)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return 1000 * statistics.median(wall), 1000 * statistics.median(cpu)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--scenes", type=int, default=20, help="distinct seeds cycled through")
    args = ap.parse_args()
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("note: set OMP_NUM_THREADS=1 for single-core numbers")
    scenes = [sample_scene(s) for s in range(args.scenes)]
    render_scene(scenes[0], (0, 0, 1, 1), (64, 64))  # warm up
    full = (0.0, 0.0, 1.0, 1.0)
    # 512 pixels of an 8192 view: a 1/16-wide box around the middle of the canvas.
    crop = (0.45, 0.40, 0.45 + 1 / 16, 0.40 + 1 / 16)
    t256 = median_ms(scenes, full, (256, 256), args.repeats)
    t512 = median_ms(scenes, full, (512, 512), args.repeats)
    tcrop = median_ms(scenes, crop, (512, 512), args.repeats)
    print(f"median of {args.repeats} renders      wall ms   cpu ms")
    print(f"256x256 full view          : {t256[0]:7.1f}  {t256[1]:7.1f}")
    print(f"512x512 full view          : {t512[0]:7.1f}  {t512[1]:7.1f}")
    print(f"512x512 crop of 8192 view  : {tcrop[0]:7.1f}  {tcrop[1]:7.1f}")
    print(f"crop / full ratio          : {tcrop[0] / t512[0]:7.2f}  {tcrop[1] / t512[1]:7.2f}")


if __name__ == "__main__":
    main()
