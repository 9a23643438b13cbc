"""Train the INFD autoencoder + CLIF renderer (paper §4.1) on procedural landscapes or your own images.

Each example: the whole image downsampled to the encoder's input size; the ground truth downsampled to a
random resolution between the input size and ``--max-res``, of which a fixed ``--patch`` x ``--patch`` crop
is the target, rendered from the field at that crop's box and cell. Loss: L1 + perceptual + VQ + hinge GAN
with the adaptive weight of eq. 2 (GAN from ``--gan-start`` on).

    python recipes/train_autoencoder.py --out runs/ae                 # defaults = the shipped model
    python recipes/train_autoencoder.py --out runs/ae --resume        # continue after an interruption
    python recipes/train_autoencoder.py --images my_photos/ --out runs/ae_photos
    python recipes/train_autoencoder.py --mixed --balanced ...        # FFHQ-6K-Mix style data (§5.3)

Writes ``OUT/infd`` (an autoencoder-only model, loadable with ``infd_solve.load_model``), ``OUT/state.pt``
(resume point, written atomically every ``--save-every`` steps), ``OUT/losses.png`` and ``OUT/train_log.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

import infd_solve
from infd_solve import INFDConfig, INFDModel
from infd_solve.data import LandscapeDataset, render_scene
from infd_solve.io import atomic_path, save_figure
from infd_solve.losses import DetailEnergyLoss, perceptual_loss
from infd_solve.models.renderer import COORD_CHANNELS, FEATURE_SAMPLING

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


# ---------------------------------------------------------------------------------------------------- data
def _to_tensor(rgb01: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb01)).permute(2, 0, 1).float() * 2 - 1


class LandscapeSource:
    """Procedural scenes: ground truth is rendered directly at the chosen resolution (exact, antialiased)."""

    def __init__(self, input_size, patch, max_res, mixed=False, balanced=False, num_scenes=100_000, seed=0):
        self.input_size, self.patch, self.max_res = input_size, patch, max_res
        self.balanced = balanced
        self.data = LandscapeDataset(num_scenes, seed=seed, low_res=max(input_size, min(256, max_res)),
                                     high_res=max_res, mixed=mixed)
        self.high = [i for i in range(len(self.data)) if self.data.max_resolution(i) == max_res]

    def example(self, rng: np.random.Generator):
        if self.balanced and self.high and rng.random() < 0.5:  # §5.3: half the batch from high-res images
            index = int(rng.choice(self.high))
        else:
            index = int(rng.integers(len(self.data)))
        scene, top_res = self.data.scene(index), self.data.max_resolution(index)
        x, _ = render_scene(scene, size=(self.input_size, self.input_size))
        res = _random_resolution(rng, max(self.input_size, self.patch), top_res)
        box = _random_crop_box(rng, res, self.patch)
        gt, _ = render_scene(scene, box, (self.patch, self.patch))
        return _to_tensor(x), _to_tensor(gt), torch.tensor(box)


class ImageFolderSource:
    """Your own images of mixed sizes (centre square crop); ground truth by area downsampling."""

    def __init__(self, folder, input_size, patch, max_res):
        self.paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {folder}")
        self.input_size, self.patch, self.max_res = input_size, patch, max_res

    def example(self, rng: np.random.Generator):
        path = self.paths[int(rng.integers(len(self.paths)))]
        with Image.open(path) as im:
            im = im.convert("RGB")
            side = min(im.size)
            left, top = (im.width - side) // 2, (im.height - side) // 2
            im = im.crop((left, top, left + side, top + side))
        x = im.resize((self.input_size, self.input_size), Image.Resampling.BOX)
        res = _random_resolution(rng, max(self.input_size, self.patch), min(self.max_res, side))
        box = _random_crop_box(rng, res, self.patch)
        full = im.resize((res, res), Image.Resampling.BOX) if res != side else im
        l, t = round(box[0] * res), round(box[1] * res)
        gt = full.crop((l, t, l + self.patch, t + self.patch))
        as01 = lambda img: np.asarray(img, dtype=np.float32) / 255
        return _to_tensor(as01(x)), _to_tensor(as01(gt)), torch.tensor(box)


def _random_resolution(rng, low, high) -> int:
    """Log-uniform, so every scale octave gets the same share of training."""
    if high <= low:
        return int(low)
    return int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))


def _random_crop_box(rng, res, patch):
    i, j = rng.integers(0, res - patch + 1, size=2)
    return (j / res, i / res, (j + patch) / res, (i + patch) / res)


class Batches(torch.utils.data.IterableDataset):
    def __init__(self, source, batch_size, seed):
        self.source, self.batch_size, self.seed = source, batch_size, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:
            xs, gts, boxes = zip(*(self.source.example(rng) for _ in range(self.batch_size)))
            yield torch.stack(xs), torch.stack(gts), torch.stack(boxes)


# ------------------------------------------------------------------------------------------- discriminator
class PatchDiscriminator(nn.Module):
    """Small PatchGAN (as the official trainer's, fewer channels)."""

    def __init__(self, channels=32, layers=2):
        super().__init__()
        blocks, c = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)], channels
        for _ in range(layers - 1):
            blocks += [nn.Conv2d(c, 2 * c, 4, 2, 1), nn.BatchNorm2d(2 * c), nn.LeakyReLU(0.2)]
            c *= 2
        blocks += [nn.Conv2d(c, 1, 3, 1, 1)]
        self.main = nn.Sequential(*blocks)

    def forward(self, x):
        return self.main(x)


def adaptive_gan_weight(rec_loss, gan_loss, last_layer) -> torch.Tensor:
    """Eq. 2: balance the GAN gradient against the reconstruction gradient at the last layer."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0, 1e4).detach()


# --------------------------------------------------------------------------------------------------- model
def default_config(args) -> INFDConfig:
    levels = [1] + [2] * (int(math.log2(args.input_size // args.latent)))
    stack = {"ch": args.ch, "ch_mult": levels, "num_res_blocks": args.res_blocks, "resolution": args.input_size,
             "z_channels": 3}
    return INFDConfig(
        z_shape=(3, args.latent, args.latent), encoder=stack, decoder=stack, n_embed=args.n_embed or None,
        renderer={"feature_channels": args.ch, "hidden_channels": args.hidden, "normalize": False,
                  "feature_sampling": args.feature_sampling, "coord_encoding": args.coord_encoding}, unet=None,
    )


def adapt_renderer_input(weight: torch.Tensor, features: int, old: str, new: str) -> torch.Tensor:
    """The init's renderer ``conv_in`` weight (``[out, in, k, k]``) for another ``coord_encoding``.

    Feature and cell columns are copied. From ``relative`` to ``periodic``, the sine columns take the relative
    coordinate's weights divided by pi (sin(pi r) ~ pi r, so the net starts as before near cell centres) and
    the cosine columns start at zero; other new position columns start at zero, and dropped ones are dropped.
    """
    if old == new:
        return weight
    n_old, n_new = COORD_CHANNELS[old], COORD_CHANNELS[new]
    if weight.shape[1] != features + n_old + 2:
        raise ValueError(f"renderer input of {weight.shape[1]} channels does not match coord_encoding {old!r}")
    feat, position, cell = weight.split([features, n_old, 2], dim=1)
    new_position = weight.new_zeros(weight.shape[0], n_new, *weight.shape[2:])
    if old == "relative" and new == "periodic":
        new_position[:, :2] = position / math.pi
    return torch.cat([feat, new_position, cell], 1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/autoencoder"))
    p.add_argument("--images", type=Path, help="train on a folder of your images instead of landscapes")
    p.add_argument("--mixed", action="store_true", help="landscapes: most scenes only at low resolution")
    p.add_argument("--balanced", action="store_true", help="sample high-resolution scenes for half a batch")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--latent", type=int, default=16)
    p.add_argument("--ch", type=int, default=32)
    p.add_argument("--res-blocks", type=int, default=1)
    p.add_argument("--hidden", type=int, default=32, help="renderer hidden channels")
    p.add_argument("--n-embed", type=int, default=512, help="codebook size; 0: no quantizer (continuous latents)")
    p.add_argument("--feature-sampling", choices=list(FEATURE_SAMPLING), default="nearest",
                   help="renderer feature lookup (nearest: official CLIF)")
    p.add_argument("--coord-encoding", choices=list(COORD_CHANNELS),
                   help="renderer input for the position within a cell (relative: official CLIF, the default "
                        "without --init; periodic: sin/cos, continuous across cell borders; none: left out). "
                        "Default with --init: the init's. A different one adapts the init's renderer input layer "
                        "(see adapt_renderer_input)")
    p.add_argument("--init", help="start from this model directory (same autoencoder sizes)")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="train decoder and renderer only: the latents, and a denoiser trained on them, stay valid")
    p.add_argument("--patch", type=int, default=24)
    p.add_argument("--max-res", type=int, default=1024)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--perceptual", choices=["lpips", "substitute"], default="lpips")
    p.add_argument("--perceptual-weight", type=float, default=1.0)
    p.add_argument("--detail-weight", type=float, default=0.0,
                   help="weight of DetailEnergyLoss (texture strength at any phase; 0: off)")
    p.add_argument("--gan-weight", type=float, default=0.75)
    p.add_argument("--gan-start", type=int, default=3000)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="data-generating processes")
    p.add_argument("--resume", action="store_true")
    return p.parse_args(argv)


def write_train_log(out: Path, argv, **fields) -> dict:
    """``OUT/train_log.json``: the exact command line plus ``fields``, written atomically and printed."""
    command = " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:]))
    log = {"command": command, **fields}
    with atomic_path(out / "train_log.json") as tmp:
        tmp.write_text(json.dumps(log, indent=2) + "\n")
    print(json.dumps(log, indent=2))
    return log


def plot_losses(history: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in history.items():
        if name == "step" or not values:
            continue
        v = np.asarray(values, dtype=float)
        k = max(1, len(v) // 100)
        smooth = np.convolve(v, np.ones(k) / k, mode="valid")
        ax.plot(history["step"][k - 1 :][: len(smooth)], smooth, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.pt"

    init = infd_solve.load_model(args.init) if args.init else None
    if args.coord_encoding is None:
        args.coord_encoding = init.config.renderer.coord_encoding if init else "relative"
    config = default_config(args)
    if args.init:
        if args.freeze_encoder:  # the latents stay the same, so the init's denoiser stays valid: keep it
            config = dataclasses.replace(config, unet=init.config.unet, scheduler=init.config.scheduler,
                                         latent_scale=init.config.latent_scale)
    model = INFDModel(config)
    if args.init:
        skip = ("unet.",) if not args.freeze_encoder or init.config.unet is None else ()
        skip += ("quantizer.",) if model.quantizer is None else ()  # fine-tune the decoder on unquantized z
        weights = {k: v for k, v in init.state_dict().items() if not k.startswith(skip)}
        weights["renderer.conv_in.weight"] = adapt_renderer_input(
            weights["renderer.conv_in.weight"], config.renderer.feature_channels,
            init.config.renderer.coord_encoding, config.renderer.coord_encoding)
        model.load_state_dict(weights)
    frozen = ("unet.", "encoder.", "quantizer.") if args.freeze_encoder else ("unet.",)
    model.encoder.requires_grad_(not args.freeze_encoder)
    if model.quantizer is not None:
        model.quantizer.requires_grad_(not args.freeze_encoder)
    disc = PatchDiscriminator()
    gen_params = [p for n, p in model.named_parameters() if not n.startswith(frozen)]
    opt = torch.optim.Adam(gen_params, lr=args.lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=args.lr, betas=(0.5, 0.9))
    detail_loss = DetailEnergyLoss()
    perceptual, perceptual_name = perceptual_loss("lpips" if args.perceptual == "lpips" else "substitute")
    history = {"step": [], "l1": [], "perceptual": [], "detail": [], "vq": [], "gan_g": [], "gan_d": []}
    step, wall = 0, 0.0
    if args.resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)  # our own file
        model.load_state_dict(state["model"])
        disc.load_state_dict(state["disc"])
        opt.load_state_dict(state["opt"])
        opt_d.load_state_dict(state["opt_d"])
        step, wall, history = state["step"], state["wall"], state["history"]
        print(f"resumed from {state_path} at step {step}")

    if args.images:
        source = ImageFolderSource(args.images, args.input_size, args.patch, args.max_res)
    else:
        source = LandscapeSource(args.input_size, args.patch, args.max_res, args.mixed, args.balanced, seed=args.seed)
    loader = iter(torch.utils.data.DataLoader(Batches(source, args.batch_size, [args.seed, step]), batch_size=None,
                                              num_workers=args.workers, persistent_workers=args.workers > 0))

    def save_state():
        with atomic_path(state_path) as tmp:
            torch.save({"model": model.state_dict(), "disc": disc.state_dict(), "opt": opt.state_dict(),
                        "opt_d": opt_d.state_dict(), "step": step, "wall": wall, "history": history,
                        "args": vars(args) | {"out": str(args.out), "images": str(args.images)}}, tmp)

    bar = tqdm(total=args.steps, initial=step, desc="autoencoder")
    model.train()
    try:
        while step < args.steps:
            t0 = time.time()
            x, gt, boxes = next(loader)
            z = model.encoder(x)
            z_q, vq_loss, _ = model.quantizer(z) if model.quantizer is not None else (z, torch.zeros(()), None)
            phi = model.decoder(z_q)
            pred = torch.cat([model.render(phi[i : i + 1], (args.patch, args.patch), tuple(b.tolist()))
                              for i, b in enumerate(boxes)])
            l1 = (pred - gt).abs().mean()
            perc = perceptual(pred, gt).mean()
            detail = detail_loss(pred, gt).mean() if args.detail_weight else torch.zeros(())
            rec = l1 + args.perceptual_weight * perc + args.detail_weight * detail
            loss = rec + vq_loss
            gan_g = d_loss = torch.zeros(())
            use_gan = args.gan_weight > 0 and step >= args.gan_start
            if use_gan:
                gan_g = -disc(pred).mean()
                weight = adaptive_gan_weight(rec, gan_g, model.renderer.conv_out.weight)
                loss = loss + args.gan_weight * weight * gan_g
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if use_gan:
                d_loss = (F.relu(1 - disc(gt)).mean() + F.relu(1 + disc(pred.detach())).mean()) / 2
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            step += 1
            wall += time.time() - t0
            terms = {"l1": l1, "perceptual": perc, "detail": detail, "vq": vq_loss, "gan_g": gan_g, "gan_d": d_loss}
            for name, v in terms.items():
                history.setdefault(name, []).append(float(v.detach()))  # setdefault: states from older runs
            history["step"].append(step)
            bar.update()
            bar.set_postfix(l1=f"{float(l1.detach()):.4f}", perc=f"{float(perc.detach()):.4f}")
            if step % args.save_every == 0 or step == args.steps:
                save_state()
    except KeyboardInterrupt:
        save_state()
        print(f"\ninterrupted at step {step}; state saved to {state_path} (continue with --resume)", file=sys.stderr)
        sys.exit(130)
    finally:
        bar.close()

    model.eval()
    model.save(out / "infd")
    plot_losses(history, out / "losses.png", f"autoencoder ({perceptual_name})")
    write_train_log(out, argv, steps=step, wall_seconds=round(wall, 1), threads=args.threads,
                    perceptual=perceptual_name,
                    final={k: float(np.mean(v[-200:])) for k, v in history.items() if k != "step" and v},
                    parameters={n: sum(p.numel() for p in getattr(model, n).parameters())
                                for n in ("encoder", "quantizer", "decoder", "renderer")
                                if getattr(model, n) is not None})
    return model


if __name__ == "__main__":
    main()
