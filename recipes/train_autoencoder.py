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
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import infd_solve
from infd_solve import INFDConfig, INFDModel
from infd_solve.losses import DetailEnergyLoss, perceptual_loss
from infd_solve.models.renderer import COORD_CHANNELS, FEATURE_SAMPLING, PADDING
from infd_solve.training import (Batches, ImageFolderSource, LandscapeSource, PatchDiscriminator, adapt_renderer_input,
                                 adaptive_gan_weight, load_train_state, save_train_state, write_train_log)
from infd_solve.viz import plot_training

def default_config(args) -> INFDConfig:
    levels = [1] + [2] * (int(math.log2(args.input_size // args.latent)))
    stack = {"ch": args.ch, "ch_mult": levels, "num_res_blocks": args.res_blocks, "resolution": args.input_size,
             "z_channels": 3}
    return INFDConfig(
        z_shape=(3, args.latent, args.latent), encoder=stack, decoder=stack, n_embed=args.n_embed or None,
        renderer={"feature_channels": args.ch, "hidden_channels": args.hidden, "normalize": False,
                  "feature_sampling": args.feature_sampling, "coord_encoding": args.coord_encoding,
                  "padding": args.padding}, unet=None,
    )


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
    p.add_argument("--padding", choices=list(PADDING),
                   help="renderer padding at the canvas edge (zeros: official, the default without --init; "
                        "reflect: no dark frame, see the model card's stage 7). Default with --init: the init's. "
                        "Changing it alone needs no training: --steps 0 writes the init with the new padding")
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
    if args.padding is None:
        args.padding = init.config.renderer.padding if init else "zeros"
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
    state = load_train_state(state_path, args.resume)
    if state is not None:
        model.load_state_dict(state["model"])
        disc.load_state_dict(state["disc"])
        opt.load_state_dict(state["opt"])
        opt_d.load_state_dict(state["opt_d"])
        step, wall, history = state["step"], state["wall"], state["history"]

    if args.images:
        source = ImageFolderSource(args.images, args.input_size, args.patch, args.max_res)
    else:
        source = LandscapeSource(args.input_size, args.patch, args.max_res, args.mixed, args.balanced, seed=args.seed)
    loader = iter(torch.utils.data.DataLoader(Batches(source, args.batch_size, [args.seed, step]), batch_size=None,
                                              num_workers=args.workers, persistent_workers=args.workers > 0))

    def save_state():
        save_train_state(state_path, model=model.state_dict(), disc=disc.state_dict(), opt=opt.state_dict(),
                         opt_d=opt_d.state_dict(), step=step, wall=wall, history=history, args=vars(args))

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
    plot_training(history, out / "losses.png", f"autoencoder ({perceptual_name})")
    write_train_log(out, argv, steps=step, wall_seconds=round(wall, 1), threads=args.threads,
                    perceptual=perceptual_name,
                    final={k: float(np.mean(v[-200:])) for k, v in history.items() if k != "step" and v},
                    parameters={n: sum(p.numel() for p in getattr(model, n).parameters())
                                for n in ("encoder", "quantizer", "decoder", "renderer")
                                if getattr(model, n) is not None})
    return model


if __name__ == "__main__":
    main()
