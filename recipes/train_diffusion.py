"""Train the latent diffusion denoiser of an INFD model on its encoder's latents.

diffusers ``UNet2DModel`` + ``DDPMScheduler`` (epsilon prediction by default, or v with ``--prediction``; linear
betas 0.0015-0.0195 over 1000 steps, as the official INFD), AdamW, EMA of the weights (the EMA copy is what is
saved and sampled, as officially).
Latents are the encoder's pre-quantization outputs, as in the official code.

    python recipes/train_diffusion.py --autoencoder runs/ae/infd --out runs/dm            # shipped defaults
    python recipes/train_diffusion.py --autoencoder runs/ae/infd --out runs/dm --resume   # continue
    python recipes/train_diffusion.py ... --device cuda --time-limit 30 --workers 8      # 30 min on a GPU

``--time-limit`` ends the run early with a complete model of the steps done (``--resume`` with more continues it).
The random draws are made on the CPU, so a run is the same on any device up to floating-point rounding.

Writes ``OUT/infd`` (the complete model: autoencoder, renderer, EMA denoiser), ``OUT/state.pt`` (resume
point), ``OUT/latents.pt`` (cached training latents), ``OUT/losses.png`` and ``OUT/train_log.json``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import infd_solve
from infd_solve import INFDModel
from infd_solve.cli import resolve_device
from infd_solve.io import atomic_path
from infd_solve.models.infd import PREDICTION_TYPES
from infd_solve.models.official import unet_config_from_official
from infd_solve.training import (add_device_arguments, deadline, encode_scenes, load_train_state, save_train_state,
                                 write_train_log)
from infd_solve.viz import plot_training



def set_latent_normalization(config, latents: torch.Tensor, per_channel: bool, input_scale: float = 1.0,
                             channel_gamma: float = 1.0) -> None:
    """``config.latent_scale`` (and with ``per_channel`` ``latent_shift``) for the denoiser's latents: one scale
    for all channels, or each channel's mean and scale, at a spread of ``input_scale``. With ``channel_gamma``
    each channel's scale goes as its standard deviation to the power ``gamma - 1`` (1: one scale; 0: the
    channels at equal spreads; above 1 the strong channels keep more of the signal than the weak ones), with an
    overall spread of ``input_scale``."""
    if per_channel:
        config.latent_shift = [round(float(v), 4) for v in latents.mean((0, 2, 3))]
        config.latent_scale = [round(input_scale / float(v), 4) for v in latents.std((0, 2, 3))]
    elif channel_gamma == 1:
        config.latent_shift, config.latent_scale = None, round(input_scale / float(latents.std()), 4)
    else:
        std = latents.std((0, 2, 3)).double()
        scales = std.pow(channel_gamma - 1)
        scales *= input_scale / (scales * std).pow(2).mean().sqrt()
        config.latent_shift, config.latent_scale = None, [round(float(v), 4) for v in scales]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--autoencoder", required=True, help="model directory (or official .pth) whose latents to model")
    p.add_argument("--out", type=Path, default=Path("runs/diffusion"))
    p.add_argument("--num-scenes", type=int, default=20000,
                   help="procedural landscapes; each is also encoded mirrored (2x the training latents)")
    p.add_argument("--model-channels", type=int, default=64)
    p.add_argument("--channel-mult", type=int, nargs="+", default=[1, 2, 2])
    p.add_argument("--res-blocks", type=int, default=1)
    p.add_argument("--attention", type=int, nargs="*", default=[2, 4], help="downsampling factors with attention")
    p.add_argument("--head-channels", type=int, default=32)
    p.add_argument("--prediction", choices=PREDICTION_TYPES, default="epsilon",
                   help="what the denoiser predicts: the noise (official) or v, which keeps its error small in x0 "
                        "at high noise, where an eps error is amplified by 1/sqrt(alpha_bar)")
    p.add_argument("--normalize-channels", action="store_true",
                   help="zero mean and unit variance per latent channel (per-channel latent_shift and latent_scale; "
                        "by default one latent_scale for all): a code whose channels differ in variance, as a "
                        "patch code's do, otherwise keeps its strong channels' signal to far higher noise levels "
                        "than the weak ones', so few of the schedule's steps decide them")
    p.add_argument("--input-scale", type=float, default=1.0,
                   help="the denoiser's latents at this standard deviation instead of 1 (the input scaling of Chen, "
                        "'On the importance of noise scheduling', 2023): below 1 every timestep keeps less signal, "
                        "which redundant data (many channels that carry one layout) may need for the schedule to "
                        "decide its layout over more than its first few steps")
    p.add_argument("--channel-gamma", type=float, default=1.0,
                   help="each latent channel's scale ~ its standard deviation ** (gamma - 1): 1 is one scale for "
                        "all, 0 gives every channel the same spread, above 1 a code's strong (layout) channels keep "
                        "more signal at each noise level than its weak (detail) ones")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="processes rendering the scenes to encode")
    add_device_arguments(p)
    p.add_argument("--init-denoiser", metavar="MODEL",
                   help="start from this complete model's denoiser (same sizes and prediction), e.g. to continue a "
                        "run whose state.pt is lost: its EMA weights, a new optimizer")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    if not args.input_scale > 0:
        p.error(f"--input-scale must be positive (got {args.input_scale})")
    if not np.isfinite(args.channel_gamma):
        p.error(f"--channel-gamma must be a finite number (got {args.channel_gamma})")
    if args.normalize_channels and args.channel_gamma != 1:
        p.error("--normalize-channels already gives every channel the same spread; drop --channel-gamma")
    return args


def init_denoiser(unet, config, path) -> None:
    """Load the denoiser of the complete model at ``path`` into ``unet``, refusing one of other sizes or another
    prediction type (its weights would not mean the same)."""
    other = infd_solve.load_model(path)
    if other.unet is None:
        raise SystemExit(f"--init-denoiser {path} has no denoiser")
    if other.config.unet != config.unet or other.config.z_shape != config.z_shape:
        raise SystemExit(f"--init-denoiser {path}: its denoiser has other sizes than the one these flags build")
    if other.config.scheduler.get("prediction_type", "epsilon") != config.scheduler.get("prediction_type", "epsilon"):
        raise SystemExit(f"--init-denoiser {path} predicts {other.config.scheduler.get('prediction_type', 'epsilon')}"
                         ", not what --prediction asks")
    unet.load_state_dict(other.unet.state_dict())


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    state_path, latents_path = out / "state.pt", out / "latents.pt"

    ae = infd_solve.load_model(args.autoencoder)
    config = copy.deepcopy(ae.config)
    config.unet = unet_config_from_official({
        "image_size": config.z_shape[1], "in_channels": config.z_shape[0], "out_channels": config.z_shape[0],
        "model_channels": args.model_channels, "channel_mult": args.channel_mult, "num_res_blocks": args.res_blocks,
        "attention_resolutions": args.attention, "num_head_channels": args.head_channels})
    config.scheduler = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0015,
                        "beta_end": 0.0195}
    if args.prediction != "epsilon":  # the shipped config stays as it was
        config.scheduler["prediction_type"] = args.prediction
    model = INFDModel(config).to(device)
    # everything but the denoiser (a complete model's own is a starting point only with --init-denoiser)
    model.load_state_dict({k: v for k, v in ae.state_dict().items() if not k.startswith("unet.")}, strict=False)
    unet, scheduler = model.unet, model.scheduler
    if args.init_denoiser:
        init_denoiser(unet, config, args.init_denoiser)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.01)

    # Each scene and its mirror image, both encoded: landscapes are left-right symmetric, but the encoder is not,
    # so flipping a latent would teach the denoiser latents the encoder never makes (they decode worse).
    latents = torch.load(latents_path, weights_only=True) if latents_path.exists() else None
    if latents is None or len(latents) != 2 * args.num_scenes:
        latents = encode_scenes(model, args.num_scenes, mirror=True, workers=args.workers).cpu()
        with atomic_path(latents_path) as tmp:
            torch.save(latents, tmp)
    set_latent_normalization(config, latents, args.normalize_channels, args.input_scale, args.channel_gamma)
    model.config.latent_scale, model.config.latent_shift = config.latent_scale, config.latent_shift
    print(f"latents: {tuple(latents.shape)}, mean {latents.mean():.3f}, std {latents.std():.3f}; "
          f"latent_scale {config.latent_scale}" + (f", latent_shift {config.latent_shift}" if config.latent_shift
                                                   else ""))
    latents = model.scale(latents.to(device))

    history = {"step": [], "mse": []}
    step, wall = 0, 0.0
    # a state from a run with other latent units would go on learning the wrong space (None: as runs before the flags)
    units = {"latent_shift": config.latent_shift, "input_scale": None if args.input_scale == 1 else args.input_scale,
             "channel_gamma": None if args.channel_gamma == 1 else args.channel_gamma}
    state = load_train_state(state_path, args.resume, must_match=units)
    if state is not None:
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, wall, history = state["step"], state["wall"], state["history"]

    def save_state():
        save_train_state(state_path, unet=unet.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(), step=step,
                         wall=wall, history=history, args=vars(args), **units)

    rng = torch.Generator().manual_seed(args.seed * 7919 + step)
    stop_at = deadline(args.time_limit)
    bar = tqdm(total=args.steps, initial=step, desc="diffusion")
    unet.train()
    try:
        while step < args.steps and time.time() < stop_at:
            t0 = time.time()
            z0 = latents[torch.randint(len(latents), (args.batch_size,), generator=rng).to(device)]
            noise = torch.randn(z0.shape, generator=rng).to(device)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch_size,), generator=rng).to(device)
            target = noise if args.prediction == "epsilon" else scheduler.get_velocity(z0, noise, t)
            loss = F.mse_loss(unet(scheduler.add_noise(z0, noise, t), t).sample, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for e, p in zip(ema.parameters(), unet.parameters()):
                    e.lerp_(p, 1 - args.ema)
            step += 1
            wall += time.time() - t0
            history["step"].append(step)
            history["mse"].append(float(loss.detach()))
            bar.update()
            bar.set_postfix(mse=f"{float(loss.detach()):.4f}")
            if step % args.save_every == 0:
                save_state()
        save_state()
    except KeyboardInterrupt:
        save_state()
        print(f"\ninterrupted at step {step}; state saved to {state_path} (continue with --resume)", file=sys.stderr)
        sys.exit(130)
    finally:
        bar.close()

    model.unet.load_state_dict(ema.state_dict())
    model.eval()
    model.to("cpu").save(out / "infd")
    plot_training(history, out / "losses.png", f"latent diffusion ({args.prediction} MSE)")
    write_train_log(out, argv, steps=step, wall_seconds=round(wall, 1), threads=args.threads,
                    device=str(device), latent_scale=config.latent_scale,
                    final_mse=float(np.mean(history["mse"][-200:])) if history["mse"] else None,
                    denoiser_parameters=sum(p.numel() for p in unet.parameters()))
    return model


if __name__ == "__main__":
    main()
