"""``infd-sample``: unconditional samples from an INFD model, rendered at any size.

Usage::

    infd-sample                                                # 4 samples, 256x256, from the shipped model
    infd-sample --model ffhq.pth --num 16 --size 1024 --seed 7 -o outputs/ffhq
    infd-sample --model my_model_dir --size 384 640 --steps 100 --eta 0 --mode official

Each sample is latent DDIM (official "ddimN" respacing; ``--eta`` defaults to the model's, 1.0 for official
checkpoints), decoded to a feature field and rendered with ``INFDModel.render_image`` (tiled, bounded memory;
``--mode exact`` does not depend on ``--tile``, ``--mode official`` reproduces the official patchwise sampler).

Outputs in ``--out`` (default ``outputs/samples``): ``sample_{seed+i:05d}.png`` for sample ``i`` and, when
``--num`` > 1, ``grid.png``: each sample rendered again at a preview size (long side at most 256), which the
field allows at no loss. Samples are written one band of tiles at a time, so memory does not grow with
``--size``. Sample ``i`` uses its own generator ``torch.Generator().manual_seed(seed + i)``
(CPU, so the starting noise is the same on every device), hence ``--num 1 --seed 1`` gives exactly the second
image of ``--num 2 --seed 0``: on one machine the PNG bytes are identical. With ``--batch-size`` > 1 several
samples share denoiser calls (faster on a GPU); their noise is still per-sample, but batched kernels may change
the last bits, so only ``--batch-size 1`` (the default) promises bit-identical images.

Files are written atomically (a temporary sibling renamed into place), so Ctrl-C never leaves a half-written
image (exit code 130); an output path that is an input (the model) is refused. A missing model, a bad path or
an invalid option ends with a one-line error and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import exit_status, load_sampling_model, model_path, new_parser, run_command

PROG = "infd-sample"
PREVIEW_SIDE = 256  # the long side of each sample in grid.png


def build_parser(prog: str = PROG):
    from ..rendering import RENDER_MODES

    p = new_parser(prog, __doc__)
    p.add_argument("--model", default="default",
                   help='"default" (the shipped model), a directory saved by INFDModel.save, or an official .pth')
    p.add_argument("--num", type=int, default=4, help="number of samples (default 4)")
    p.add_argument("--size", type=int, nargs="+", default=[256], metavar="S",
                   help="output size: S (square) or H W (default 256)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i (default 0)")
    p.add_argument("--steps", type=int, default=200, help="DDIM steps, official respacing (default 200)")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta (default: the model's, 1.0 for official)")
    p.add_argument("--tile", type=int, default=256, help="render tile size (default 256)")
    p.add_argument("--mode", choices=RENDER_MODES, default="exact",
                   help="render_image mode: exact (tile-independent) or official (patchwise) (default exact)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="samples per denoiser batch (default 1: bit-identical per-sample reproducibility)")
    p.add_argument("-o", "--out", default="outputs/samples", help="output directory (default outputs/samples)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _check_args(parser, args) -> tuple[int, int]:
    from ..rendering import check_size
    from ..samplers.ddim import ddim_timesteps

    if len(args.size) not in (1, 2):
        parser.error(f"--size takes S or H W, got {len(args.size)} numbers")
    size = tuple(args.size) * (2 if len(args.size) == 1 else 1)
    for name, value in (("--num", args.num), ("--tile", args.tile), ("--batch-size", args.batch_size)):
        if value <= 0:
            parser.error(f"{name} must be positive, got {value}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.eta is not None and args.eta < 0:
        parser.error(f"--eta must be >= 0, got {args.eta}")
    try:
        ddim_timesteps(args.steps)  # validated against the model's schedule again when sampling
        return check_size(size, "--size")
    except ValueError as e:
        parser.error(str(e))


def run(parser, args) -> dict:
    import torch
    from tqdm.auto import tqdm

    from ..io import image_grid, refuse_overwriting_inputs, save_image, write_png
    from ..samplers.ddim import ddim_timesteps

    size = _check_args(parser, args)
    out_dir = Path(args.out)
    names = [f"sample_{args.seed + i:05d}.png" for i in range(args.num)]
    outputs = [out_dir / n for n in names] + ([out_dir / "grid.png"] if args.num > 1 else [])

    model_file = model_path(args.model)
    refuse_overwriting_inputs([out_dir, *outputs], [model_file])
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output {out_dir} exists and is not a directory")

    model = load_sampling_model(model_file, args.device)
    ddim_timesteps(args.steps, model.scheduler.config.num_train_timesteps)

    progress = not args.no_progress
    bar = tqdm(total=args.num * args.steps, desc="sampling", unit="step", disable=not progress)
    preview = tuple(max(1, round(side * min(1.0, PREVIEW_SIDE / max(size)))) for side in size)
    written, previews = [], []
    for start in range(0, args.num, args.batch_size):
        idx = list(range(start, min(start + args.batch_size, args.num)))
        generators = [torch.Generator().manual_seed(args.seed + i) for i in idx]
        which = f"{idx[0] + 1}" if len(idx) == 1 else f"{idx[0] + 1}-{idx[-1] + 1}"
        bar.set_postfix_str(f"sample {which}/{args.num}: DDIM")
        z = model.sample(len(idx), steps=args.steps, eta=args.eta, generator=generators,
                         callback=lambda _, n=len(idx): bar.update(n), progress=False)
        with torch.inference_mode():
            phi = model.decode(z)
            for k, i in enumerate(idx):
                bar.set_postfix_str(f"sample {i + 1}/{args.num}: render {size[0]}x{size[1]}")
                bands = model.render_bands(phi[k : k + 1], size, tile=args.tile, mode=args.mode, uint8=True,
                                           progress=progress and size[0] * size[1] > 1024 * 1024)
                written.append(write_png(out_dir / names[i], *size, (band[0].numpy() for _, band in bands)))
                bar.write(str(written[-1]))
                if args.num > 1:
                    previews.append(model.render_image(phi[k : k + 1], preview, tile=args.tile, mode=args.mode)[0])
    bar.close()
    if args.num > 1:
        written.append(save_image(image_grid(torch.stack(previews).cpu()), out_dir / "grid.png"))
        print(written[-1])
    return {"written": written}


def run_sample(argv: list[str] | None = None, prog: str = PROG) -> dict:
    """The command in-process: returns ``{"written"}`` (the sample paths, then ``grid.png``); ends with
    ``SystemExit`` (after its one-line error) where the program exits non-zero: 2 bad input, 130 Ctrl-C."""
    return run_command(build_parser, run, argv, prog)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """The ``infd-sample`` program: returns its exit status (0 done, 2 bad input, 130 Ctrl-C)."""
    return exit_status(run_sample, argv, prog)


if __name__ == "__main__":
    sys.exit(main())
