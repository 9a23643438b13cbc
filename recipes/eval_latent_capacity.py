"""How much must a latent carry to reconstruct the domain better than bicubic upsampling? A linear yardstick.

For each patch size P and channel count K: the top-K principal components of P x P pixel patches of the truth
at ``--input-size`` (fitted on training scenes), i.e. a K x (S/P) x (S/P) latent decoded linearly, then
bicubically upsampled to 256 and compared with the 256 truth of held-out scenes. A learned autoencoder with a
latent of the same size should reconstruct at least this well; the model card compares them.

    python recipes/eval_latent_capacity.py                         # 128-px input, 4x4 and 8x8 patches
    python recipes/eval_latent_capacity.py --input-size 64 --patches 2 4 --channels 3 4 8 12
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from infd_solve.data import TEST_SEED_OFFSET, scene_tensor
from infd_solve.io import atomic_path
from infd_solve.metrics import psnr


def patches(images: torch.Tensor, p: int) -> torch.Tensor:
    """``N x 3 x S x S`` -> ``N x (S/p)^2 x 3p^2``."""
    return F.unfold(images.double(), p, stride=p).transpose(1, 2)


def linear_code_scores(train: torch.Tensor, test: torch.Tensor, test_256: torch.Tensor, p: int,
                       channels: list[int]) -> dict[int, tuple[float, float]]:
    """Per K: mean PSNR of the K-component code's reconstruction at the input size and, upsampled, at 256."""
    data = patches(train, p).reshape(-1, 3 * p * p)
    mean = data.mean(0)
    basis = torch.linalg.svd(data - mean, full_matrices=False)[2]
    q = patches(test, p) - mean
    scores = {}
    for k in channels:
        if k > basis.shape[0]:
            continue
        rec = F.fold(((q @ basis[:k].T @ basis[:k]) + mean).transpose(1, 2), test.shape[-2:], p, stride=p).float()
        up = F.interpolate(rec, size=256, mode="bicubic", align_corners=False).clamp(-1, 1)
        scores[k] = (float(psnr(rec.clamp(-1, 1), test).mean()), float(psnr(up, test_256).mean()))
    return scores


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--patches", type=int, nargs="+", default=[4, 8])
    p.add_argument("--channels", type=int, nargs="+", default=[3, 4, 8, 12, 16, 24, 32, 48])
    p.add_argument("--train-scenes", type=int, default=60)
    p.add_argument("--scenes", type=int, default=20, help="held-out scenes scored")
    p.add_argument("--out", type=Path, default=Path("outputs/latent_capacity.json"))
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    size = args.input_size
    train = torch.cat([scene_tensor(i, size) for i in range(args.train_scenes)])
    seeds = [TEST_SEED_OFFSET + 10_000 + i for i in range(args.scenes)]  # eval_default's held-out scenes
    test, test_256 = torch.cat([scene_tensor(s, size) for s in seeds]), torch.cat([scene_tensor(s, 256) for s in seeds])
    bicubic = lambda x: F.interpolate(x, size=256, mode="bicubic", align_corners=False).clamp(-1, 1)
    test_64 = torch.cat([scene_tensor(s, 64) for s in seeds])
    table = {"bicubic from 64 PSNR @256 (dB)": float(psnr(bicubic(test_64), test_256).mean()),
             f"bicubic from {size} PSNR @256 (dB)": float(psnr(bicubic(test), test_256).mean()), "codes": []}
    print(f"{'latent':>12} {'PSNR @' + str(size):>10} {'PSNR @256':>10}")
    for p in args.patches:
        for k, (at_input, at_256) in linear_code_scores(train, test, test_256, p, args.channels).items():
            latent = f"{k}x{size // p}x{size // p}"
            table["codes"].append({"latent": latent, "patch": p, "channels": k, f"PSNR @{size}": at_input,
                                   "PSNR @256": at_256})
            print(f"{latent:>12} {at_input:10.2f} {at_256:10.2f}")
    for key in [k for k in table if k.startswith("bicubic")]:
        print(f"{key}: {table[key]:.2f}")
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(table, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)
    return table


if __name__ == "__main__":
    main()
