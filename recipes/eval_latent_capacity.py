"""How much must a latent carry to reconstruct the domain better than bicubic upsampling? A linear yardstick.

For each patch size P and channel count K: the top-K principal components of P x P pixel patches of the truth
at ``--input-size`` (fitted on training scenes), i.e. a K x (S/P) x (S/P) latent decoded linearly, then
bicubically upsampled to 256 and compared with the 256 truth of held-out scenes. A learned autoencoder with a
latent of the same size should reconstruct at least this well; the model card compares them.

``--models`` measures trained patch codes (``train_autoencoder.py --patch-code``, fitted or refined) the same way,
by their own linear decode (no renderer), and how much of the latent's cell grid that decode draws at 1024
(bicubic): the latent-cell block ratio and the field's seam ratio (``infd_solve.metrics``), and the block ratio
when latent noise, scaled to a decoded error of ``--noise-rms``, stands in for a sampler's error.

    python recipes/eval_latent_capacity.py                         # 128-px input, 4x4 and 8x8 patches
    python recipes/eval_latent_capacity.py --input-size 64 --patches 2 4 --channels 3 4 8 12
    python recipes/eval_latent_capacity.py --patches --models runs/pca/code/infd runs/refined/code/infd
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import infd_solve
from infd_solve.baselines import bicubic
from infd_solve.checkpoints import CheckpointError
from infd_solve.data import TEST_SEED_OFFSET, scene_tensor
from infd_solve.io import atomic_path
from infd_solve.metrics import latent_block_ratio, psnr, seam_ratio

CELL_SIZE = 1024  # where the cell patterns are read: a latent cell of a 16x16 latent spans 64 px


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
        up = bicubic(rec, 256)
        scores[k] = (float(psnr(rec.clamp(-1, 1), test).mean()), float(psnr(up, test_256).mean()))
    return scores


def cell_pattern(decoded: torch.Tensor, latent_size: int) -> dict[str, tuple[float, float]]:
    """Block ratio at the latent's cells and seam ratio at the field's (one input pixel), of ``decoded`` at 1024
    (along x, along y); the field's seams less a 64-px margin, the canvas edge's own pattern."""
    image = bicubic(decoded, CELL_SIZE)
    field_cell = CELL_SIZE // decoded.shape[-1]
    return {"block ratio @1024": latent_block_ratio(image, latent_size),
            "field seam ratio @1024": seam_ratio(image[..., 64:-64, 64:-64], field_cell)}


def load_patch_code(path: str):
    try:
        model = infd_solve.load_model(path, device="cpu").float()
    except CheckpointError as error:
        raise SystemExit(f"--models {path}: {error}") from None
    if not hasattr(model.decoder, "linear_decode"):
        raise SystemExit(f"--models {path}: a {model.config.encoder.kind!r} autoencoder has no linear decode; "
                         "only patch codes (train_autoencoder.py --patch-code) are measured")
    return model


@torch.no_grad()
def model_code_scores(model, seeds: list[int], test_256: torch.Tensor, noise_rms: float, seed: int = 0) -> dict:
    """A trained patch code's linear decode of the held-out scenes: PSNR at its input size and bicubic at 256, its
    cell pattern at 1024, and the block ratio of latents plus noise whose decoded error has RMS ``noise_rms``."""
    decoder = model.decoder
    size = model.config.input_size[0]
    test = torch.cat([scene_tensor(s, size) for s in seeds])
    z = model.encode(test)
    decoded = decoder.linear_decode(z)
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed))
    noise *= noise_rms / (decoder.linear_decode(z + noise) - decoded).square().mean().sqrt()
    latent_size = z.shape[-1]
    return {f"PSNR @{size}": float(psnr(decoded.clamp(-1, 1), test).mean()),
            "PSNR @256": float(psnr(bicubic(decoded, 256), test_256).mean()),
            **cell_pattern(decoded, latent_size),
            "block ratio @1024, noisy latent": latent_block_ratio(bicubic(decoder.linear_decode(z + noise),
                                                                           CELL_SIZE), latent_size)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--patches", type=int, nargs="*", default=[4, 8], help="PCA patch sizes (none: skip)")
    p.add_argument("--channels", type=int, nargs="+", default=[3, 4, 8, 12, 16, 24, 32, 48])
    p.add_argument("--train-scenes", type=int, default=60)
    p.add_argument("--scenes", type=int, default=20, help="held-out scenes scored")
    p.add_argument("--models", nargs="*", default=[], help="trained patch-code models to measure")
    p.add_argument("--noise-rms", type=float, default=0.05, help="decoded error of the noisy latents")
    p.add_argument("--out", type=Path, default=Path("outputs/latent_capacity.json"))
    return p.parse_args(argv)


def pca_codes(args, seeds: list[int], test_256: torch.Tensor) -> dict:
    size = args.input_size
    train = torch.cat([scene_tensor(i, size) for i in range(args.train_scenes)])
    test = torch.cat([scene_tensor(s, size) for s in seeds])
    table = {f"bicubic from {size} PSNR @256 (dB)": float(psnr(bicubic(test, 256), test_256).mean()),
             "codes": []}
    if args.patches:
        print(f"{'latent':>12} {'PSNR @' + str(size):>10} {'PSNR @256':>10}")
    for p in args.patches:
        for k, (at_input, at_256) in linear_code_scores(train, test, test_256, p, args.channels).items():
            latent = f"{k}x{size // p}x{size // p}"
            table["codes"].append({"latent": latent, "patch": p, "channels": k, f"PSNR @{size}": at_input,
                                   "PSNR @256": at_256})
            print(f"{latent:>12} {at_input:10.2f} {at_256:10.2f}")
    return table


def trained_codes(models: dict, seeds: list[int], test_256: torch.Tensor, noise_rms: float) -> dict:
    rows = {}
    for path, model in models.items():
        rows[path] = model_code_scores(model, seeds, test_256, noise_rms)
        print(path, {k: tuple(round(x, 2) for x in v) if isinstance(v, tuple) else round(v, 2)
                     for k, v in rows[path].items()})
    # the truth's patterns at the last model's cells, and those of a perfect code's decode: the truth at the
    # input size, bicubically upsampled (what no renderer that only interpolates can go below)
    last = list(models.values())[-1].config
    latent, size = last.z_shape[-1], last.input_size[0]
    truth = torch.cat([scene_tensor(s, CELL_SIZE) for s in seeds])
    rows["truth"] = {"block ratio @1024": latent_block_ratio(truth, latent),
                     "field seam ratio @1024": seam_ratio(truth[..., 64:-64, 64:-64], CELL_SIZE // size)}
    rows[f"bicubic from the truth at {size}"] = cell_pattern(torch.cat([scene_tensor(s, size) for s in seeds]),
                                                             latent)
    for name in list(rows)[-2:]:
        print(name, {k: tuple(round(x, 2) for x in v) for k, v in rows[name].items()})
    return {"trained codes": rows}


def main(argv=None) -> dict:
    args = parse_args(argv)
    models = {path: load_patch_code(path) for path in args.models}  # refused before any work
    seeds = [TEST_SEED_OFFSET + 10_000 + i for i in range(args.scenes)]  # eval_default's held-out scenes
    test_256 = torch.cat([scene_tensor(s, 256) for s in seeds])
    test_64 = torch.cat([scene_tensor(s, 64) for s in seeds])
    table = {"bicubic from 64 PSNR @256 (dB)": float(psnr(bicubic(test_64, 256), test_256).mean())}
    table |= pca_codes(args, seeds, test_256)
    if models:
        table |= trained_codes(models, seeds, test_256, args.noise_rms)
    for key in [k for k in table if k.startswith("bicubic")]:
        print(f"{key}: {table[key]:.2f}")
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(table, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)
    return table


if __name__ == "__main__":
    main()
