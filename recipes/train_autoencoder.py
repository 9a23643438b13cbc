"""Train the INFD autoencoder + CLIF renderer (paper §4.1) on procedural landscapes or your own images.

Each example: the whole image downsampled to the encoder's input size; the ground truth downsampled to a
random resolution between the input size and ``--max-res``, of which a fixed ``--patch`` x ``--patch`` crop
is the target, rendered from the field at that crop's box and cell. Loss: L1 + perceptual + VQ + hinge GAN
with the adaptive weight of eq. 2 (GAN from ``--gan-start`` on).

    python recipes/train_autoencoder.py --out runs/ae                 # defaults = the shipped model
    python recipes/train_autoencoder.py --out runs/ae --resume        # continue after an interruption
    python recipes/train_autoencoder.py --images my_photos/ --out runs/ae_photos
    python recipes/train_autoencoder.py --mixed --balanced ...        # FFHQ-6K-Mix style data (§5.3)
    python recipes/train_autoencoder.py --patch-code 32 --input-size 128 --latent 16 --out runs/pc
    python recipes/train_autoencoder.py ... --device cuda --workers 8 --time-limit 30  # 30 min on a GPU

``--time-limit`` ends the run early with a complete model of the steps done (``--resume`` with more continues it).

``--patch-code K``: the encoder is a fixed linear code instead of a learned one (``infd_solve.models.patch_code``):
the top K principal components of P x P pixel patches, P = input size / latent, whitened (``--whitening``),
lapped with ``--overlap`` (each patch reaches that many pixels into its neighbours), fitted before training on
the encoder inputs of the first 32 batches, and with ``--refine-code STEPS`` trained further on 8 x as many
(``refine_patch_code``: a lower error, and a fainter grid of the cells). The decoder adds ``--ch`` learned
feature channels to the code's linear decode, and the renderer draws that image (sampled with
``--feature-sampling``, default bicubic here) plus what it learns, from zero: the untrained model reconstructs
exactly like the linear code. No quantizer. An ``--init`` that is a patch code keeps its code (and its sizes)
whether or not the flag is given.

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
from infd_solve.cli import resolve_device
from infd_solve.losses import DetailEnergyLoss, perceptual_loss
from infd_solve.models.patch_code import KIND as PATCH_CODE, fit_patch_code, refine_patch_code, set_patch_code
from infd_solve.models.renderer import COORD_CHANNELS, FEATURE_SAMPLING, PADDING
from infd_solve.training import (Batches, ImageFolderSource, LandscapeSource, PatchDiscriminator, add_device_arguments,
                                 adapt_renderer_input, adaptive_gan_weight, deadline, load_train_state,
                                 save_train_state, write_train_log)
from infd_solve.viz import plot_training

def default_config(args, init=None) -> INFDConfig:
    """The model the flags describe. A patch-code ``init`` lends its autoencoder (code and sizes) unchanged."""
    renderer = {"hidden_channels": args.hidden, "normalize": False, "feature_sampling": args.feature_sampling,
                "coord_encoding": args.coord_encoding, "padding": args.padding}
    if init is not None and init.config.encoder.kind == PATCH_CODE:
        c = init.config
        return INFDConfig(z_shape=c.z_shape, encoder=c.encoder, decoder=c.decoder, n_embed=None, unet=None,
                          renderer={**renderer, "feature_channels": c.decoder.field_channels, "rgb_skip": True})
    if args.patch_code:
        code = {"kind": PATCH_CODE, "patch": args.input_size // args.latent, "z_channels": args.patch_code,
                "ch": args.ch, "num_res_blocks": args.res_blocks, "resolution": args.input_size,
                "overlap": args.overlap or 0, "refined": bool(args.refine_code)}
        return INFDConfig(z_shape=(args.patch_code, args.latent, args.latent), encoder=code, decoder=code,
                          n_embed=None, unet=None, renderer={**renderer, "feature_channels": 3 + args.ch,
                                                             "rgb_skip": True})
    levels = [1] + [2] * (int(math.log2(args.input_size // args.latent)))
    stack = {"ch": args.ch, "ch_mult": levels, "num_res_blocks": args.res_blocks, "resolution": args.input_size,
             "z_channels": 3}
    return INFDConfig(
        z_shape=(3, args.latent, args.latent), encoder=stack, decoder=stack, n_embed=args.n_embed or None,
        renderer={**renderer, "feature_channels": args.ch}, unet=None,
    )


def check_patch_code(args, init) -> None:
    """Refuse flags that do not fit a patch code (new or the init's), saying which."""
    if args.patch_code is not None and args.patch_code < 1:
        raise SystemExit(f"--patch-code must be a positive number of components, got {args.patch_code}")
    if args.patch_code and args.input_size % args.latent:
        raise SystemExit(f"--patch-code: --input-size {args.input_size} is not a multiple of --latent {args.latent} "
                         "(the patch size)")
    init_code = init.config.encoder if init is not None and init.config.encoder.kind == PATCH_CODE else None
    if args.patch_code and init is not None and init_code is None:
        raise SystemExit(f"--patch-code: --init {args.init} is a {init.config.encoder.kind} autoencoder, not a "
                         "patch code; leave out --init to fit a new code")
    if args.patch_code and init_code is not None and args.patch_code != init_code.z_channels:
        raise SystemExit(f"--patch-code {args.patch_code}: --init {args.init} is a patch code of "
                         f"{init_code.z_channels} components")
    if init_code is not None and init.config.input_size != (args.input_size, args.input_size):
        raise SystemExit(f"--init {args.init} is a patch code for {init.config.input_size[0]}-px input: pass "
                         f"--input-size {init.config.input_size[0]} --latent {init.config.z_shape[1]}")
    for name, does in (("whitening", "shapes"), ("overlap", "shapes"), ("refine_code", "trains")):
        value = getattr(args, name)
        if value is not None and (not args.patch_code or init_code is not None):
            raise SystemExit(f"--{name.replace('_', '-')} {value} {does} a new patch code: give --patch-code K "
                             "without a patch-code --init (an init keeps its code)")
    if args.refine_code is not None and args.refine_code < 1:
        raise SystemExit(f"--refine-code must be a positive number of steps, got {args.refine_code}")
    if args.overlap is not None and not 0 <= args.overlap <= args.input_size // args.latent // 2:
        raise SystemExit(f"--overlap must be between 0 and half the patch size ({args.input_size // args.latent // 2})"
                         f", got {args.overlap}")
    if args.whitening is not None and not 0 <= args.whitening <= 1:
        raise SystemExit(f"--whitening must be between 0 and 1, got {args.whitening}")
    if (args.patch_code or init_code is not None) and args.n_embed:
        raise SystemExit(f"--n-embed {args.n_embed}: a patch code has no quantizer (leave out --n-embed)")


def fit_code(model, loader, whitening: float = 1.0, refine_steps: int | None = None, batches: int = 32) -> None:
    """Fit a new patch code on the encoder inputs of the next ``batches`` training batches (refined, when asked,
    on 8 x as many), and zero the renderer's last conv: the untrained model then renders exactly the code's
    linear decode (rgb_skip)."""
    images = torch.cat([next(loader)[0] for _ in range(batches)])
    config = model.config.encoder
    code = fit_patch_code(images, config.patch, config.z_channels, whitening, config.overlap)
    if refine_steps:
        images = torch.cat([images] + [next(loader)[0] for _ in range(7 * batches)])
        code = refine_patch_code(code, images.to(model.device), config.patch, config.overlap, refine_steps)
    set_patch_code(model, code)
    with torch.no_grad():
        model.renderer.conv_out.weight.zero_()
        model.renderer.conv_out.bias.zero_()


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
    p.add_argument("--n-embed", type=int,
                   help="codebook size (default 512); 0: no quantizer (continuous latents). A patch code has none")
    p.add_argument("--patch-code", type=int, metavar="K",
                   help="the encoder is a fixed linear code: the top K principal components of P x P pixel patches "
                        "(P = input size / latent), fitted on the first 32 batches; the renderer draws its "
                        "linear decode plus what it learns (see above)")
    p.add_argument("--whitening", type=float, metavar="W",
                   help="with a new --patch-code: divide each component by its standard deviation to the power W "
                        "(default 1: whitened; 0: the data's spectrum)")
    p.add_argument("--overlap", type=int, metavar="O",
                   help="with a new --patch-code: each patch reaches O pixels into its neighbours, sine-windowed "
                        "(a lapped code; up to P/2), so that a latent error fades across cell borders instead of "
                        "drawing a block (default 0: a block code)")
    p.add_argument("--refine-code", type=int, metavar="STEPS",
                   help="with a new --patch-code: then train its analysis and synthesis apart for STEPS steps, for "
                        "a lower error and more even detail across a cell (default: the PCA as fitted)")
    p.add_argument("--feature-sampling", choices=list(FEATURE_SAMPLING),
                   help="renderer feature lookup (nearest: official CLIF, the default without --init; bicubic "
                        "for a new patch code). Default with --init: the init's")
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
    add_device_arguments(p)
    p.add_argument("--resume", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.pt"

    init = infd_solve.load_model(args.init) if args.init else None
    check_patch_code(args, init)
    patch_code = bool(args.patch_code) or (init is not None and init.config.encoder.kind == PATCH_CODE)
    if args.n_embed is None:
        args.n_embed = 0 if patch_code else 512
    if args.coord_encoding is None:
        args.coord_encoding = init.config.renderer.coord_encoding if init else "relative"
    if args.padding is None:
        args.padding = init.config.renderer.padding if init else "zeros"
    if args.feature_sampling is None:
        # a new patch code's render is its image sampled this way: bicubic, the linear yardstick's upsampling
        args.feature_sampling = init.config.renderer.feature_sampling if init else \
            "bicubic" if patch_code else "nearest"
    config = default_config(args, init)
    if args.init:
        if args.freeze_encoder:  # the latents stay the same, so the init's denoiser stays valid: keep it
            config = dataclasses.replace(config, unet=init.config.unet, scheduler=init.config.scheduler,
                                         latent_scale=init.config.latent_scale,
                                         latent_shift=init.config.latent_shift)
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
    model.to(device), disc.to(device)  # before the optimizers, so that resumed optimizer states land there too
    gen_params = [p for n, p in model.named_parameters() if not n.startswith(frozen)]
    opt = torch.optim.Adam(gen_params, lr=args.lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=args.lr, betas=(0.5, 0.9))
    detail_loss = DetailEnergyLoss().to(device)
    perceptual, perceptual_name = perceptual_loss("lpips" if args.perceptual == "lpips" else "substitute")
    perceptual.to(device)
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
    if model.config.encoder.kind == PATCH_CODE and init is None and state is None:  # else the code is loaded
        fit_code(model, loader, 1.0 if args.whitening is None else args.whitening, args.refine_code)

    def save_state():
        save_train_state(state_path, model=model.state_dict(), disc=disc.state_dict(), opt=opt.state_dict(),
                         opt_d=opt_d.state_dict(), step=step, wall=wall, history=history, args=vars(args))

    stop_at = deadline(args.time_limit)
    bar = tqdm(total=args.steps, initial=step, desc="autoencoder")
    model.train()
    try:
        while step < args.steps and time.time() < stop_at:
            t0 = time.time()
            x, gt, boxes = next(loader)
            x, gt = x.to(device), gt.to(device)
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
            if step % args.save_every == 0:
                save_state()
        save_state()
    except KeyboardInterrupt:
        save_state()
        print(f"\ninterrupted at step {step}; state saved to {state_path} (continue with --resume)", file=sys.stderr)
        sys.exit(130)
    finally:
        bar.close()

    model.eval()
    model.to("cpu").save(out / "infd")
    plot_training(history, out / "losses.png", f"autoencoder ({perceptual_name})")
    write_train_log(out, argv, steps=step, wall_seconds=round(wall, 1), threads=args.threads,
                    device=str(device), perceptual=perceptual_name,
                    final={k: float(np.mean(v[-200:])) for k, v in history.items() if k != "step" and v},
                    parameters={n: sum(p.numel() for p in getattr(model, n).parameters())
                                for n in ("encoder", "quantizer", "decoder", "renderer")
                                if getattr(model, n) is not None})
    return model


if __name__ == "__main__":
    main()
