"""How well a model's denoiser estimates x0 from noisy latents of held-out scenes, by noise level.

For each timestep t: the held-out scenes' latents (as the denoiser sees them, ``model.scale(z)``) are noised,
the denoiser's eps (``INFDModel.denoise``, whatever it predicts) gives ``x0 = (z_t - sqrt(1 - a) eps) / sqrt(a)``,
and the table reports that estimate's mean squared error over the error of predicting each channel's mean, both in
the decoder's units (so one scale or per-channel units compare): below 1 the denoiser knows something. An eps
error is amplified by ``1 / sqrt(a)`` at high noise; this shows it.

    python recipes/eval_denoiser.py --model runs/dm/infd
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import infd_solve
from infd_solve.data import TEST_SEED_OFFSET, scene_tensor
from infd_solve.io import atomic_path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--scenes", type=int, default=32, help="held-out scenes (eval_default's first ones)")
    p.add_argument("--timesteps", type=int, nargs="+", default=[100, 500, 700, 900, 999])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("outputs/eval_denoiser.json"))
    return p.parse_args(argv)


@torch.no_grad()
def x0_error_ratios(model, scenes: int, timesteps, seed: int = 0) -> dict[int, float]:
    """``{t: x0 MSE / channel-mean MSE}`` over the latents of ``scenes`` held-out scenes."""
    size = model.config.input_size
    x = torch.cat([scene_tensor(TEST_SEED_OFFSET + 10_000 + i, size) for i in range(scenes)]).to(model.device)
    latents = model.encode(x.to(model.dtype))
    z0 = model.scale(latents)
    # errors in the decoder's units, so that models whose denoisers see other latent units compare
    baseline = (latents - latents.mean((0, 2, 3), keepdim=True)).pow(2).mean()
    generator = torch.Generator().manual_seed(seed)
    ratios = {}
    for t in timesteps:
        a = model.alphas_cumprod[t].to(z0)
        z_t = a.sqrt() * z0 + (1 - a).sqrt() * torch.randn(z0.shape, generator=generator).to(z0)
        x0 = (z_t - (1 - a).sqrt() * model.denoise(z_t, t)) / a.sqrt()
        ratios[t] = float((model.unscale(x0) - latents).pow(2).mean() / baseline)
    return ratios


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = infd_solve.load_model(args.model)
    bad = [t for t in args.timesteps if not 0 <= t < len(model.alphas_cumprod)]
    if bad or args.scenes < 2:
        raise SystemExit(f"--timesteps must lie in [0, {len(model.alphas_cumprod) - 1}] and --scenes be >= 2 "
                         f"(got timesteps {bad or args.timesteps}, scenes {args.scenes})")
    ratios = x0_error_ratios(model, args.scenes, args.timesteps, args.seed)
    for t, ratio in ratios.items():
        print(f"t = {t:4d}: x0 error / channel-mean error {ratio:.3f}")
    table = {"model": args.model, "scenes": args.scenes, "prediction": model.scheduler.config.prediction_type,
             "x0 error / channel-mean error": {str(t): r for t, r in ratios.items()}}
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(table, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)
    return table


if __name__ == "__main__":
    main()
