"""Evaluate the shipped default INFD model and domain CLIP on held-out procedural landscapes.

    python recipes/eval_default.py                      # 200 held-out scenes, writes outputs/eval_default.{json,png}
    python recipes/eval_default.py --scenes 50 --quick  # fewer scenes and crops, for a fast look

Prints one table:
- autoencoder reconstruction PSNR at the input size, 256 and 1024 against the procedural ground truth at that
  size. At 1024 the PSNR is measured on one random 256x256 window of the 1024 canvas per scene: the default
  renderer is local, so a window rendered alone is exactly that window of the full render (tested);
- scale consistency: render at 1024, area-downsample to 256, compare with rendering at 256 (on a random
  quarter-side box per scene at 4x pixel density, for the same reason; ``--full`` renders whole canvases);
- patch realism at 1024: Fréchet distance, in the domain CLIP's image-feature space, between 64x64 crops of
  generated 1024^2 images and of real 1024^2 images, for INFD and for the baseline "render at the input size,
  bicubic-upsample to 1024" (the paper's LDM + super-resolution comparison);
- unconditional samples: the same distance on whole images, beside the real-vs-real floor;
- seams: :func:`infd_solve.metrics.seam_ratio` (the largest over the median mean |neighbour difference| per
  position within a feature cell, along x and y; about 1 without seams) of unconditional samples rendered at
  1024 (whole canvases less one cell at each edge, where the renderer's zero padding is not a seam) and at
  2048 (one 512x512 window per sample on the cell lattice, away from the edges, to stay cheap); the same of
  second differences ("bend": where the slope jumps, e.g. at the cell centres of bilinear features);
- domain CLIP zero-shot top-1 over the label set on held-out crops dominated (>= 60 %) by one label.
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
from infd_solve.clip import load_clip, zero_shot
from infd_solve.data import LABELS, TEST_SEED_OFFSET, label_captions, render_scene, sample_scene
from infd_solve.io import save_figure
from infd_solve.metrics import area_downsample, field_seam_ratios, frechet_distance, psnr


def gt(scene, box=(0, 0, 1, 1), size=(256, 256)) -> torch.Tensor:
    return torch.from_numpy(render_scene(scene, box, size)[0]).permute(2, 0, 1)[None] * 2 - 1


def random_box(rng, side):
    left, top = rng.uniform(0, 1 - side, size=2)
    return (float(left), float(top), float(left + side), float(top + side))


def aligned_box(rng, res, pixels):
    """A ``pixels``-wide window on the pixel lattice of a ``res``-wide canvas."""
    i, j = rng.integers(0, res - pixels + 1, size=2)
    return (j / res, i / res, (j + pixels) / res, (i + pixels) / res)


@torch.no_grad()
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--clip", default="default")
    p.add_argument("--scenes", type=int, default=200)
    p.add_argument("--crops", type=int, default=4, help="64x64 crops per image for patch realism")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps for unconditional samples")
    p.add_argument("--full", action="store_true", help="render whole 1024 canvases instead of windows")
    p.add_argument("--seam-samples", type=int, default=32, help="unconditional samples for the seam ratios")
    p.add_argument("--quick", action="store_true", help="2 crops per image, 8 samples for the seam ratios")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("outputs/eval_default"))
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.crops = 2
        args.seam_samples = min(args.seam_samples, 8)
    t_start = time.time()
    model = infd_solve.load_model(args.model)
    clip = load_clip(args.clip)
    rng = np.random.default_rng(args.seed)
    scenes = [sample_scene(TEST_SEED_OFFSET + 10_000 + i) for i in range(args.scenes)]
    s_in = model.config.input_size[0]
    table = {}

    # ---- reconstruction and scale consistency
    rec = {s_in: [], 256: [], 1024: []}
    consistency = []
    for scene in tqdm(scenes, desc="reconstruction"):
        phi = model.decode(model.encode(gt(scene, size=(s_in, s_in))))
        rec[s_in].append(psnr(model.render(phi, s_in), gt(scene, size=(s_in, s_in))).item())
        rec[256].append(psnr(model.render(phi, 256), gt(scene, size=(256, 256))).item())
        if args.full:
            big = model.render_image(phi, 1024)
            window = aligned_box(rng, 1024, 256)
            l, t = round(window[0] * 1024), round(window[1] * 1024)
            rec[1024].append(psnr(big[..., t : t + 256, l : l + 256], gt(scene, window, (256, 256))).item())
            consistency.append(psnr(area_downsample(big, 4), model.render(phi, 256)).item())
        else:
            window = aligned_box(rng, 1024, 256)
            rec[1024].append(psnr(model.render(phi, 256, window), gt(scene, window, (256, 256))).item())
            box = aligned_box(rng, 256, 64)  # 64 px at 256 = 256 px at 1024
            consistency.append(psnr(area_downsample(model.render(phi, 256, box), 4), model.render(phi, 64, box)).item())
    for size, values in rec.items():
        table[f"reconstruction PSNR @{size} (dB)"] = float(np.mean(values))
    table["scale consistency 1024->256 vs 256 (dB)"] = float(np.mean(consistency))

    # ---- unconditional samples
    gens = [torch.Generator().manual_seed(args.seed * 100_003 + i) for i in range(args.scenes)]
    z = torch.cat([model.sample(len(g), steps=args.steps, generator=g, progress=False)
                   for g in tqdm([gens[i : i + 50] for i in range(0, len(gens), 50)], desc="sampling")])
    phis = [model.decode(z[i : i + 1]) for i in range(len(z))]

    # ---- patch realism at 1024: 64x64 crops of 1024^2 images
    real, infd, bicubic = [], [], []
    for scene, phi in tqdm(list(zip(scenes, phis)), desc="patch realism"):
        low = model.render(phi, s_in)
        for _ in range(args.crops):
            box = aligned_box(rng, 1024, 64)
            real.append(gt(scene, box, (64, 64)))
            infd.append(model.render(phi, 64, box))
            # bicubic upsampling of the input-size render, cropped to the same box
            l, t = round(box[0] * 1024), round(box[1] * 1024)
            up = F.interpolate(low, size=1024, mode="bicubic", align_corners=False)
            bicubic.append(up[..., t : t + 64, l : l + 64].clamp(-1, 1))
    f_real, f_infd, f_bicubic = (clip.encode_images(torch.cat(x)) for x in (real, infd, bicubic))
    table["patch FD @1024: INFD"] = frechet_distance(f_infd, f_real)
    table["patch FD @1024: input-size render + bicubic"] = frechet_distance(f_bicubic, f_real)

    # ---- whole unconditional samples vs real images, and the real-vs-real floor
    size = clip.size
    samples = torch.cat([model.render(phi, size) for phi in phis])
    real_a = torch.cat([gt(s, size=(size, size)) for s in scenes])
    real_b = torch.cat([gt(sample_scene(TEST_SEED_OFFSET + 50_000 + i), size=(size, size)) for i in range(args.scenes)])
    f_samples, f_a, f_b = (clip.encode_images(x) for x in (samples, real_a, real_b))
    table["sample FD (whole images)"] = frechet_distance(f_samples, f_a)
    table["real-vs-real FD floor"] = frechet_distance(f_b, f_a)

    # ---- seams at feature-cell borders, in samples at 1024 and 2048
    field_size = phis[0].shape[-1]
    seam_rng = np.random.default_rng([args.seed, 1])  # its own stream: the other sections' crops stay as before
    for size, ratios in field_seam_ratios(model, phis[: args.seam_samples], field_size, seam_rng).items():
        for kind, (along_x, along_y) in ratios.items():
            table[f"{kind} ratio @{size} along x"], table[f"{kind} ratio @{size} along y"] = along_x, along_y

    # ---- domain CLIP zero-shot top-1 on held-out crops dominated by one label
    crops, targets = [], []
    for i, scene in enumerate(scenes):
        for _ in range(20):
            box = random_box(rng, rng.uniform(0.1, 0.5))
            rgb, labels = render_scene(scene, box, (clip.size, clip.size))
            counts = np.bincount(labels.ravel(), minlength=len(LABELS)) / labels.size
            if counts.max() >= 0.6:
                crops.append(torch.from_numpy(rgb).permute(2, 0, 1) * 2 - 1)
                targets.append(int(counts.argmax()))
                break
    top1, _ = zero_shot(clip, torch.stack(crops), torch.tensor(targets), [label_captions()[n] for n in LABELS])
    table[f"CLIP zero-shot top-1 ({len(crops)} crops, %)"] = 100 * top1
    table["wall time (s)"] = round(time.time() - t_start, 1)

    cli.report_table(table, args.out.with_suffix(".json"), scenes=args.scenes, steps=args.steps)
    figure(scenes[:4], phis[:4], model, args.out.with_suffix(".png"), table)
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")
    return table


def figure(scenes, phis, model, path: Path, table: dict) -> None:
    """Unconditional samples at 256 with a 1024-density zoom, beside real scenes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    show = lambda t: ((t[0].permute(1, 2, 0).clamp(-1, 1) + 1) / 2).numpy()
    zoom = (0.375, 0.375, 0.625, 0.625)
    fig, axes = plt.subplots(3, len(phis), figsize=(3 * len(phis), 9))
    for k, (scene, phi) in enumerate(zip(scenes, phis)):
        axes[0, k].imshow(show(gt(scene)))
        axes[1, k].imshow(show(model.render(phi, 256)))
        axes[2, k].imshow(show(model.render(phi, 256, zoom)))
    for ax, title in zip(axes[:, 0], ["real (held-out)", "INFD sample @256", "sample, centre @1024"]):
        ax.set_ylabel(title)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"default model: recon PSNR@256 {table['reconstruction PSNR @256 (dB)']:.1f} dB, "
                 f"patch FD INFD {table['patch FD @1024: INFD']:.3f} vs bicubic "
                 f"{table['patch FD @1024: input-size render + bicubic']:.3f}")
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
