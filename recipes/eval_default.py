"""Evaluate an INFD model (default: the shipped one) and the domain CLIP against the procedural ground truth.

    python recipes/eval_default.py --threads 1                 # 200 held-out scenes, writes outputs/eval_default.*
    python recipes/eval_default.py --model runs/ae/infd --sections reconstruction   # an autoencoder alone
    python recipes/eval_default.py --scenes 50 --quick         # fewer scenes and crops, for a fast look

Every comparison is at the same pixel size as the truth (held-out scenes, seeds >= TEST_SEED_OFFSET). Sections
(``--sections``; the sample sections need a denoiser):

- ``reconstruction``: autoencoder PSNR at the input size, 256 and 1024 (one 256x256 window of the 1024 canvas
  per scene: the renderer is local, so a window rendered alone is that window of the full render), beside
  bicubic upsampling of the 64-pixel truth (and of the input-size truth) to 256 on the same scenes: the ceiling
  of every inverse problem; scale consistency (a quarter-side box at 1024 density, area-downsampled, vs the
  same box at 256); the gradient ratio of reconstructions to the truth at 1024 and 2048 (same windows); thin
  lines the renderer invents at 1024 (:func:`infd_solve.metrics.spurious_line_share`: wavy contours), beside
  bicubic's from the input size; gradient concentration at 256 (below).
- ``samples``: unconditional samples (``--steps`` DDIM steps). Patch realism at 1024: Fréchet distance in the
  domain CLIP's features between 64x64 crops of samples and of real scenes, the baseline "render at the input
  size, bicubic to 1024", and the real-vs-real floor (crops of two disjoint sets of real scenes); whole-image
  FD and its floor; the judge's label statistics (pixel share and how often each label is present, samples vs
  real scenes, both through the judge at 256).
- ``crispness``: mean gradient magnitude of samples over that of real scenes in 128x128 windows at 1024 and
  2048; the canvas frame (:func:`infd_solve.metrics.edge_gradient_ratio` of 16-pixel bands along the four
  edges at 1024 and 2048, samples and truth); :func:`infd_solve.metrics.gradient_concentration` of whole samples
  and real scenes at 256 (sharp edges between flat regions score high; mottling, noise and blur low); straight
  lines across whole samples at 256
  (:func:`infd_solve.metrics.line_scores`: vertical / horizontal; the window-grid and streak artifacts).
- ``seams``: :func:`infd_solve.metrics.field_seam_ratios` (lines at feature-cell borders and bends at cell
  centres) of samples at 1024 and 2048; :func:`infd_solve.metrics.latent_block_ratio` (lines at latent-cell
  borders: a patchwork of blocks) of whole samples and of the truth at 1024. The ``reconstruction`` section
  gives the same rows for reconstructions of the first ``--seam-samples`` scenes: the autoencoder's own
  pattern, which no denoiser can remove.
- ``clip``: domain CLIP zero-shot top-1 over the label set on held-out crops dominated (>= 60 %) by one label.
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

import infd_solve
from infd_solve.baselines import bicubic
from infd_solve.clip import load_clip, zero_shot
from infd_solve.data import LABELS, TEST_SEED_OFFSET, label_captions, render_scene, sample_scene
from infd_solve.io import atomic_path, save_figure
from infd_solve.metrics import (area_downsample, edge_gradient_ratio, field_seam_ratios, frechet_distance,
                                gradient_concentration, gradient_magnitude, latent_block_ratio, line_scores, psnr,
                                spurious_line_share)

SECTIONS = ("reconstruction", "samples", "crispness", "seams", "clip")
# Random streams of the seam windows at 2048, apart from each other and from the crispness crops (stream 2), so
# that adding a section leaves the other sections' crops where they were.
SEAM_STREAMS = {"samples": 1, "reconstructions": 3}
PRESENT = 0.001  # a label is present in an image when it covers at least this share of its pixels


def gt(scene, box=(0, 0, 1, 1), size=(256, 256)) -> torch.Tensor:
    size = (size, size) if isinstance(size, int) else size
    return torch.from_numpy(render_scene(scene, box, size)[0]).permute(2, 0, 1)[None] * 2 - 1


def random_box(rng, side):
    left, top = rng.uniform(0, 1 - side, size=2)
    return (float(left), float(top), float(left + side), float(top + side))


def aligned_box(rng, res, pixels):
    """A ``pixels``-wide window on the pixel lattice of a ``res``-wide canvas."""
    i, j = rng.integers(0, res - pixels + 1, size=2)
    return (j / res, i / res, (j + pixels) / res, (i + pixels) / res)


@torch.no_grad()
def reconstruction(model, scenes, rng) -> dict:
    s_in = model.config.input_size[0]
    values: dict[str, list] = {}
    add = lambda key, value: values.setdefault(key, []).append(float(value))
    windows = []  # (reconstruction, truth, bicubic) at 1024
    for scene in tqdm(scenes, desc="reconstruction"):
        phi = model.decode(model.encode(gt(scene, size=s_in)))
        truth = gt(scene, size=256)
        add(f"reconstruction PSNR @{s_in} (dB)", psnr(model.render(phi, s_in), gt(scene, size=s_in)))
        ours = model.render(phi, 256)
        add("reconstruction PSNR @256 (dB)", psnr(ours, truth))
        add("gradient concentration @256: reconstruction", gradient_concentration(ours.clamp(-1, 1)))
        add("gradient concentration @256: truth", gradient_concentration(truth))
        add("bicubic from 64 PSNR @256 (dB)", psnr(bicubic(gt(scene, size=64), 256), truth))
        if s_in != 64:
            add(f"bicubic from {s_in} PSNR @256 (dB)", psnr(bicubic(gt(scene, size=s_in), 256), truth))
        window = aligned_box(rng, 1024, 256)
        add("reconstruction PSNR @1024 (dB)", psnr(model.render(phi, 256, window), gt(scene, window, 256)))
        box = aligned_box(rng, 256, 64)  # 64 px at 256 = 256 px at 1024
        add("scale consistency 1024->256 vs 256 (dB)",
            psnr(area_downsample(model.render(phi, 256, box), 4), model.render(phi, 64, box)))
        for size in (1024, 2048):
            window = aligned_box(rng, size, 128)
            ours_window, truth_window = model.render(phi, 128, window), gt(scene, window, 128)
            add(f"window gradient @{size}: reconstruction", gradient_magnitude(ours_window))
            add(f"window gradient @{size}: truth", gradient_magnitude(truth_window))
            if size == 1024:
                classical = crop(bicubic(gt(scene, size=s_in), size), window)
                windows.append((ours_window.clamp(-1, 1), truth_window, classical))
    table = {k: float(np.mean(v)) for k, v in values.items() if not k.startswith("window gradient")}
    for size in (1024, 2048):
        table[f"reconstruction / truth gradient @{size}"] = (np.mean(values[f"window gradient @{size}: reconstruction"])
                                                             / np.mean(values[f"window gradient @{size}: truth"]))
    ours, truth, classical = (torch.cat(w) for w in zip(*windows))
    table[f"invented thin lines @1024, share of the truth's: reconstruction / bicubic from {s_in}"] = (
        spurious_line_share(ours, truth), spurious_line_share(classical, truth))
    return table


def crop(image: torch.Tensor, box) -> torch.Tensor:
    """The pixels of ``image`` (the whole canvas) inside ``box`` (fractions on its pixel lattice)."""
    h, w = image.shape[-2:]
    return image[..., round(box[1] * h) : round(box[3] * h), round(box[0] * w) : round(box[2] * w)]


@torch.no_grad()
def sample_fields(model, count: int, steps: int, seed: int) -> list[torch.Tensor]:
    gens = [torch.Generator().manual_seed(seed * 100_003 + i) for i in range(count)]
    z = torch.cat([model.sample(len(g), steps=steps, generator=g, progress=False)
                   for g in tqdm([gens[i : i + 50] for i in range(0, count, 50)], desc="sampling")])
    return [model.decode(z[i : i + 1]) for i in range(len(z))]


@torch.no_grad()
def patch_realism(model, clip, phis, scenes, others, crops: int, rng) -> dict:
    """64x64 crops at 1024: samples, bicubic from the input size, and real scenes (two disjoint sets)."""
    s_in = model.config.input_size[0]
    real, real_other, infd, baseline = [], [], [], []
    for scene, other, phi in tqdm(list(zip(scenes, others, phis)), desc="patch realism"):
        up = bicubic(model.render(phi, s_in), 1024)
        for _ in range(crops):
            box = aligned_box(rng, 1024, 64)
            real.append(gt(scene, box, 64))
            real_other.append(gt(other, aligned_box(rng, 1024, 64), 64))
            infd.append(model.render(phi, 64, box))
            l, t = round(box[0] * 1024), round(box[1] * 1024)
            baseline.append(up[..., t : t + 64, l : l + 64])
    f_real, f_other, f_infd, f_base = (clip.encode_images(torch.cat(x)) for x in (real, real_other, infd, baseline))
    return {"patch FD @1024: INFD samples": frechet_distance(f_infd, f_real),
            "patch FD @1024: input-size render + bicubic": frechet_distance(f_base, f_real),
            "patch FD @1024: real-vs-real floor": frechet_distance(f_other, f_real)}


@torch.no_grad()
def label_statistics(judge, images: torch.Tensor) -> dict:
    """Per label: mean pixel share (%) and share of images where it is present (%), by the judge."""
    labels = torch.cat([judge.segment(images[i : i + 25]) for i in range(0, len(images), 25)])
    out = {}
    for name in judge.labels:
        share = judge.fractions(labels, name)
        out[name] = (100 * float(share.mean()), 100 * float((share >= PRESENT).double().mean()))
    return out


@torch.no_grad()
def whole_images(model, clip, judge, phis, scenes, others) -> tuple[dict, torch.Tensor]:
    """Whole-image FD and its floor, and the judge's label statistics, samples vs real scenes at 256."""
    samples = torch.cat([model.render(phi, 256) for phi in tqdm(phis, desc="samples @256")])
    real = torch.cat([gt(s) for s in scenes])
    other = torch.cat([gt(s) for s in others])
    shrink = lambda x: F.interpolate(x, size=clip.size, mode="area")
    f_samples, f_real, f_other = (clip.encode_images(shrink(x)) for x in (samples, real, other))
    table = {"sample FD (whole images)": frechet_distance(f_samples, f_real),
             "real-vs-real FD floor": frechet_distance(f_other, f_real)}
    stats_samples, stats_real = label_statistics(judge, samples), label_statistics(judge, real)
    for name in judge.labels:
        (share, present), (real_share, real_present) = stats_samples[name], stats_real[name]
        table[f"judge {name}: pixel share samples / real (%)"] = (share, real_share)
        table[f"judge {name}: present samples / real (%)"] = (present, real_present)
    table["judge: largest label gap (points)"] = max(
        max(abs(a - b) for a, b in zip(stats_samples[n], stats_real[n])) for n in judge.labels)
    return table, samples


def edge_bands(render, size: int, depth: int = 16) -> list[torch.Tensor]:
    """The four ``depth``-pixel bands along the edges of a ``size`` canvas, each turned so row 0 is the edge;
    ``render(box, (h, w))`` draws a box."""
    f = depth / size
    bands = [render((0, 0, 1, f), (depth, size)),
             torch.rot90(render((0, 1 - f, 1, 1), (depth, size)), 2, (-2, -1)),
             torch.rot90(render((0, 0, f, 1), (size, depth)), -1, (-2, -1)),
             torch.rot90(render((1 - f, 0, 1, 1), (size, depth)), 1, (-2, -1))]
    return bands


@torch.no_grad()
def crispness(model, phis, scenes, samples_256, rng, frame_samples: int = 16) -> dict:
    table = {}
    for size in (1024, 2048):
        ours, truth = [], []
        for phi, scene in tqdm(list(zip(phis, scenes)), desc=f"gradient @{size}"):
            ours.append(float(gradient_magnitude(model.render(phi, 128, aligned_box(rng, size, 128)))))
            truth.append(float(gradient_magnitude(gt(scene, aligned_box(rng, size, 128), 128))))
        table[f"gradient samples / truth @{size}"] = float(np.mean(ours) / np.mean(truth))
        frame = lambda bands: edge_gradient_ratio(torch.cat(bands))
        ours = frame([b for phi in phis[:frame_samples]
                      for b in edge_bands(lambda box, hw: model.render(phi, hw, box), size)])
        truth = frame([b for s in scenes[:frame_samples] for b in edge_bands(lambda box, hw: gt(s, box, hw), size)])
        table[f"canvas frame @{size}: outer 2 px / inner gradient, samples / truth"] = (ours, truth)
    real = torch.cat([gt(s) for s in scenes])
    concentration = lambda images: float(gradient_concentration(images.clamp(-1, 1)).mean())
    table["gradient concentration @256: samples / truth"] = (concentration(samples_256), concentration(real))
    table["lines across images @256 (vertical, horizontal): samples"] = line_scores(samples_256)
    table["lines across images @256 (vertical, horizontal): truth"] = line_scores(real)
    return table


@torch.no_grad()
def clip_zero_shot(clip, scenes, rng) -> dict:
    crops, targets = [], []
    for scene in scenes:
        for _ in range(20):
            box = random_box(rng, rng.uniform(0.1, 0.5))
            rgb, labels = render_scene(scene, box, (clip.size, clip.size))
            counts = np.bincount(labels.ravel(), minlength=len(LABELS)) / labels.size
            if counts.max() >= 0.6:
                crops.append(torch.from_numpy(rgb).permute(2, 0, 1) * 2 - 1)
                targets.append(int(counts.argmax()))
                break
    top1, _ = zero_shot(clip, torch.stack(crops), torch.tensor(targets), [label_captions()[n] for n in LABELS])
    return {f"CLIP zero-shot top-1 ({len(crops)} crops, %)": 100 * top1}


def print_table(table: dict) -> None:
    width = max(map(len, table))
    show = lambda v: " / ".join(show(x) for x in v) if isinstance(v, (tuple, list)) else f"{v:.4g}"
    print(f"\n{'metric'.ljust(width)}  value")
    for key, value in table.items():
        print(f"{key.ljust(width)}  {show(value)}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--clip", default="default")
    p.add_argument("--judge", default="default")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--scenes", type=int, default=200)
    p.add_argument("--crops", type=int, default=4, help="64x64 crops per image for patch realism")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps for unconditional samples")
    p.add_argument("--seam-samples", type=int, default=32, help="unconditional samples for the seam ratios")
    p.add_argument("--quick", action="store_true", help="2 crops per image, 8 samples for the seam ratios")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("outputs/eval_default"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--pictures", type=Path, help="only write before/after pictures into this directory")
    p.add_argument("--before", help="with --pictures: the model to compare with (e.g. the previous default)")
    args = p.parse_args(argv)
    if args.quick:
        args.crops, args.seam_samples = 2, min(args.seam_samples, 8)
    return args


@torch.no_grad()
def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.time()
    model = infd_solve.load_model(args.model)
    if args.pictures:
        models = {"before": infd_solve.load_model(args.before)} if args.before else {}
        return pictures(models | {"after": model}, args.pictures)
    clip = load_clip(args.clip)
    rng = np.random.default_rng(args.seed)
    scenes = [sample_scene(TEST_SEED_OFFSET + 10_000 + i) for i in range(args.scenes)]
    others = [sample_scene(TEST_SEED_OFFSET + 50_000 + i) for i in range(args.scenes)]
    sections = [s for s in args.sections if model.unet is not None or s in ("reconstruction", "clip")]
    table, phis = {}, []
    if "reconstruction" in sections:
        table |= reconstruction(model, scenes, rng)
    if {"samples", "crispness", "seams"} & set(sections):
        from infd_solve.judge import load_judge

        phis = sample_fields(model, args.scenes, args.steps, args.seed)
        whole, samples_256 = whole_images(model, clip, load_judge(args.judge), phis, scenes, others)
    if "samples" in sections:
        table |= patch_realism(model, clip, phis, scenes, others, args.crops, rng) | whole
    if "crispness" in sections:
        table |= crispness(model, phis, scenes, samples_256, np.random.default_rng([args.seed, 2]))
    n = args.seam_samples
    groups = {"reconstructions": reconstructed_fields(model, scenes[:n]) if "reconstruction" in sections else [],
              "samples": phis[:n] if "seams" in sections else []}
    if any(groups.values()):
        table |= cell_patterns(model, groups, scenes[:n], args.seed)
    if "clip" in sections:
        table |= clip_zero_shot(clip, scenes, rng)
    table["wall time (s)"] = round(time.time() - t_start, 1)
    print_table(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps({"model": args.model, "scenes": args.scenes, "steps": args.steps,
                                   "seed": args.seed, "metrics": table}, indent=2) + "\n")
    if phis:
        figure(scenes[:4], phis[:4], model, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.json')}" + (f" and {args.out.with_suffix('.png')}" if phis else ""))
    return table


@torch.no_grad()
def reconstructed_fields(model, scenes) -> list[torch.Tensor]:
    s_in = model.config.input_size[0]
    return [model.decode(model.encode(gt(scene, size=s_in))) for scene in scenes]


@torch.no_grad()
def cell_patterns(model, groups: dict, scenes, seed: int, size: int = 1024, seam_sizes=(1024, 2048)) -> dict:
    """Field seam and bend ratios (at ``seam_sizes``) and the latent-cell block ratio at ``size`` of each group of
    fields (``{"samples": [...], "reconstructions": [...]}``; an empty group is skipped), and the truth's block
    ratio on ``scenes``. Sample rows keep their names of earlier runs."""
    latent = model.config.z_shape[-1]
    table = {}
    for name, phis in groups.items():
        if not phis:
            continue
        suffix = "" if name == "samples" else f": {name}"
        rng = np.random.default_rng([seed, SEAM_STREAMS[name]])
        for at, ratios in field_seam_ratios(model, phis, phis[0].shape[-1], rng, seam_sizes).items():
            for kind, (along_x, along_y) in ratios.items():
                table[f"{kind} ratio @{at} (along x, along y){suffix}"] = (along_x, along_y)
        images = torch.cat([model.render_image(phi, size) for phi in phis])
        table[f"latent-cell block ratio @{size} (along x, along y): {name}"] = latent_block_ratio(images, latent)
    truth = torch.cat([gt(scene, size=size) for scene in scenes])
    return table | {f"latent-cell block ratio @{size} (along x, along y): truth": latent_block_ratio(truth, latent)}


@torch.no_grad()
def pictures(models: dict, directory: Path, sample_seeds=(3, 11, 0, 1), scene_index: int = 3) -> list[Path]:
    """Before/after pictures beside the truth at the same zoom (``models``: name -> model, e.g. old and new):

    - ``zoom_1024.png``: one held-out scene, truth and each model's reconstruction, whole at 256 and two
      256x256 windows at 1024 density (a ridge and the foreground);
    - ``samples_512.png``: unconditional samples (50 DDIM steps, ``sample_seeds``; 3 and 11 showed the old
      window grid) at 512, a held-out scene in the first column;
    - ``crop_2048.png``: a 384x384 window of a 2048 canvas, truth and the first sample of each model.
    """
    from infd_solve.io import image_grid, save_image

    directory.mkdir(parents=True, exist_ok=True)
    scene = sample_scene(TEST_SEED_OFFSET + 10_000 + scene_index)
    windows = [(0.3125, 0.375, 0.5625, 0.625), (0.5, 0.75, 0.75, 1.0)]
    rows = [[gt(scene)] + [gt(scene, w, 256) for w in windows]]
    for model in models.values():
        phi = model.decode(model.encode(gt(scene, size=model.config.input_size[0])))
        rows.append([model.render(phi, 256)] + [model.render(phi, 256, w) for w in windows])
    zoom = image_grid(torch.cat([torch.cat(r) for r in rows]), columns=3)
    sample_rows, crops = [], [gt(scene, (0.5, 0.5, 0.6875, 0.6875), 384)]
    for model in models.values():
        z = model.sample(len(sample_seeds), steps=50, progress=False,
                         generator=[torch.Generator().manual_seed(s) for s in sample_seeds])
        phis = [model.decode(z[i : i + 1]) for i in range(len(z))]
        sample_rows.append(torch.cat([gt(scene, size=512)] + [model.render(phi, 512) for phi in phis]))
        crops.append(model.render(phis[0], 384, (0.5, 0.5, 0.6875, 0.6875)))
    samples = image_grid(torch.cat(sample_rows), columns=len(sample_seeds) + 1)
    written = [save_image(zoom, directory / "zoom_1024.png"), save_image(samples, directory / "samples_512.png"),
               save_image(image_grid(torch.cat(crops), columns=len(crops)), directory / "crop_2048.png")]
    print("rows / columns: truth first, then " + ", ".join(models) + f"; wrote {', '.join(map(str, written))}")
    return written


def figure(scenes, phis, model, path: Path) -> None:
    """Unconditional samples at 256 and a 1024-density zoom, beside real scenes and their zoom."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    show = lambda t: ((t[0].permute(1, 2, 0).clamp(-1, 1) + 1) / 2).numpy()
    zoom = (0.375, 0.375, 0.625, 0.625)
    fig, axes = plt.subplots(4, len(phis), figsize=(3 * len(phis), 12))
    for k, (scene, phi) in enumerate(zip(scenes, phis)):
        for row, image in enumerate([gt(scene), gt(scene, zoom), model.render(phi, 256), model.render(phi, 256, zoom)]):
            axes[row, k].imshow(show(image))
    for ax, title in zip(axes[:, 0], ["real (held-out)", "real, centre @1024", "sample @256", "sample, centre @1024"]):
        ax.set_ylabel(title)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
