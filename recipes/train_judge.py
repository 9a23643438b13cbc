"""Train the layout judge shipped as ``infd_solve.pretrained`` ``default/judge`` (CPU, 1 thread).

Usage::

    python recipes/train_judge.py --threads 1 --pool-cache runs/judge_pool.npz   # the shipped default
    python recipes/train_judge.py --steps 200 --out outputs/judge                 # shorter, elsewhere
    python recipes/train_judge.py --resume                                        # continue <out>/train_state.pt

The judge (``infd_solve.judge.JudgeNet``) segments an image into the procedural landscapes' labels
(``infd_solve.data.landscapes.LABELS``); ``recipes/eval_layouts.py`` uses it to say what a layout's boxes hold,
independently of the CLIP that guides them. It never guides anything.

Data: a pool of ``--pool-size`` renders of training scenes (seeds below ``TEST_SEED_OFFSET``) with their
per-pixel labels, at the sizes the evaluation looks at (``--sizes``, default 64-256): the whole canvas
(``--full-fraction`` of them) or a random box (sides 0.3-1). Generated images are blurrier than the renders
and carry the decoder's texture, so each image is one of three kinds, labels always the scene's ground truth:
the clean render; the scene seen through the INFD autoencoder (``--model``: encoded from 32x32, decoded and
rendered at the size); or a render at 16-48 pixels upsampled bicubically. Crop i depends only on
(``--seed``, i), so a resumed run regenerates the same pool. Batches hold one size (as many images as
``--batch-pixels`` allow), flipped horizontally half of the time, with brightness/contrast jitter and blur.
Loss: pixel cross-entropy weighted by (label frequency)^-0.5, so small labels (sun, moon, snow) count.

Outputs in ``--out`` (default ``pretrained/default/judge``), each written atomically: ``config.json`` and
``model.safetensors`` (fp16), loadable by ``infd_solve.judge.load_judge(out)``; ``train_log.json`` (command,
settings, times, final loss, held-out pixel accuracy per label) and ``loss_curve.png`` (training loss and
held-out accuracy). ``train_state.pt`` (every ``--save-every`` steps) allows ``--resume``; deleted at the end
unless ``--keep-state``. The final evaluation reloads the exported directory with ``load_judge`` and segments
held-out scenes (seeds >= ``TEST_SEED_OFFSET``) whole at 256 and 64, clean and through the autoencoder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from infd_solve.data import landscapes as L
from infd_solve.data.crops import label_weights, labelled_batch, labelled_pool, labelled_scenes
from infd_solve.io import atomic_path
from infd_solve.judge import WEIGHTS_FILE, JudgeConfig, JudgeNet, confusion_counts, load_judge, save_judge
from infd_solve.metrics import segmentation_scores
from infd_solve.training import add_run_arguments, load_train_state, save_train_state, warmup_cosine_lr
from infd_solve.viz import plot_training

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "pretrained" / "default" / "judge"
STATE_FILE = "train_state.pt"
CHANNELS = {"default": (24, 48, 96, 128, 128), "tiny": (8, 8, 16)}  # tiny: for tests
STEM = {"default": 12, "tiny": 4}
EVAL_SEED = 2025  # the held-out scenes are the same for every run


# ----------------------------------------------------------------------------- training

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train_judge.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4000, help="optimizer steps (default 4000)")
    p.add_argument("--batch-pixels", type=int, default=8 * 128 * 128,
                   help="pixels per batch: 8 crops at 128, 2 at 256 (default 131072)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (default 2e-3)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default 1e-4)")
    p.add_argument("--pool-size", type=int, default=6000, help="number of generated crops (default 6000)")
    p.add_argument("--pool-cache", default=None, metavar="NPZ",
                   help="reuse/write the generated pool here (keyed by its settings, the generator and the model)")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 192, 256], help="crop sizes (default 64-256)")
    p.add_argument("--full-fraction", type=float, default=0.6, help="share of whole-canvas crops (default 0.6)")
    p.add_argument("--kinds", type=float, nargs=3, default=[0.45, 0.4, 0.15], metavar=("CLEAN", "AE", "UP"),
                   help="shares of clean, autoencoded and upsampled images (default 0.45 0.4 0.15)")
    p.add_argument("--model", default="default",
                   help='INFD model for the autoencoded images ("default"; "none": clean instead)')
    p.add_argument("--config", choices=sorted(CHANNELS), default="default", help="network size")
    p.add_argument("--eval-scenes", type=int, default=150, help="held-out scenes per evaluation set (default 150)")
    p.add_argument("--val-every", type=int, default=250, help="held-out accuracy every N steps (default 250)")
    add_run_arguments(p, DEFAULT_OUT, save_every=250)
    return p


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.steps < 1 or args.pool_size < 2 * len(args.sizes) or min(args.sizes) < 8 or min(args.kinds) < 0 \
            or sum(args.kinds) <= 0 or not 0 <= args.full_fraction <= 1:
        parser.error("need --steps >= 1, --pool-size >= 2 per size, sizes >= 8, non-negative --kinds and "
                     "--full-fraction in [0, 1]")
    command = shlex.join([sys.executable, *(sys.argv if argv is None else [str(Path(__file__)), *argv])])
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    model, model_id = None, "none"
    if args.model != "none":
        import infd_solve

        model = infd_solve.load_model(args.model).eval()
        model_id = hashlib.sha256(b"".join(v.detach().numpy().tobytes() for v in model.state_dict().values()
                                           if v.is_floating_point())).hexdigest()[:16]
    pool = labelled_pool(args.pool_size, args.sizes, args.seed, args.full_fraction, args.kinds, model, model_id,
                         args.pool_cache)
    t_data = time.time() - t_start
    names = L.LABELS
    weights = label_weights(pool, len(names))
    print(f"pool: {args.pool_size} crops at {args.sizes} in {t_data:.0f} s; class weights "
          + ", ".join(f"{n} {w:.2f}" for n, w in zip(names, weights.tolist())), flush=True)
    val_images, val_labels = labelled_scenes(min(48, args.eval_scenes), 128, "autoencoder", model, EVAL_SEED)

    torch.manual_seed(args.seed)
    config = JudgeConfig(labels=names, channels=CHANNELS[args.config], stem=STEM[args.config])
    net = JudgeNet(config)
    n_params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    losses, val, step, train_time = [], [], 0, 0.0
    state_path = out / STATE_FILE
    try:
        state = load_train_state(state_path, args.resume, {"config": config.to_dict(), "steps": args.steps})
    except ValueError as e:
        parser.error(str(e))
    if state is not None:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        losses, step, train_time = list(state["losses"]), int(state["step"]), float(state["train_time"])
        val = json.loads(state["val"])

    def save_state():
        save_train_state(state_path, model=net.state_dict(), optimizer=opt.state_dict(), step=step, losses=losses,
                         val=json.dumps(val), train_time=train_time, config=config.to_dict(), steps=args.steps)

    net.train()
    bar = tqdm(total=args.steps, initial=step, desc="train judge", mininterval=5.0)
    t0 = time.time()
    while step < args.steps:
        x, y = labelled_batch(pool, step, args.seed, args.sizes, args.batch_pixels)
        for g in opt.param_groups:
            g["lr"] = warmup_cosine_lr(step, args.steps, args.lr)
        loss = F.cross_entropy(net(x), y, weight=weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if step % args.val_every == 0 or step == args.steps:
            net.eval()
            scores = segmentation_scores(confusion_counts(net, val_images, val_labels), names)
            val.append({"step": step, **{k: v for k, v in scores.items() if k != "per_label"}})
            net.train()
            bar.write(f"step {step}: held-out pixel accuracy {val[-1]['pixel_accuracy']:.3f}, "
                      f"mean per label {val[-1]['mean_accuracy']:.3f}")
        if step % args.save_every == 0 and step < args.steps:
            train_time += time.time() - t0
            t0 = time.time()
            save_state()
    bar.close()
    train_time += time.time() - t0
    net.eval()
    save_judge(net, out)

    judge = load_judge(out)  # what users get: the exported fp16 weights
    evaluation = {}
    for size in (256, 64):
        for kind in ("clean", "autoencoder"):
            images, labels = labelled_scenes(args.eval_scenes, size, kind, model, EVAL_SEED)
            evaluation[f"{kind} {size}"] = segmentation_scores(confusion_counts(judge, images, labels), names)
    log = {
        "command": command,
        "args": vars(args),
        "config": config.to_dict(),
        "params": n_params,
        "weights_mb": round((out / WEIGHTS_FILE).stat().st_size / 2**20, 2),
        "model": args.model, "model_id": model_id,
        "steps": step,
        "pool_seconds": round(t_data, 1),
        "train_seconds": round(train_time, 1),
        "wall_seconds": round(time.time() - t_start, 1),
        "final_loss": round(float(np.mean(losses[-50:])), 4),
        "validation": val,
        "evaluation": {"scenes": args.eval_scenes, "split": "held-out seeds >= TEST_SEED_OFFSET, whole canvas",
                       "sets": evaluation},
        "threads": torch.get_num_threads(),
    }
    with atomic_path(out / "train_log.json") as tmp:
        tmp.write_text(json.dumps(log, indent=2) + "\n")
    plot_training({"step": list(range(1, len(losses) + 1)), "weighted cross-entropy": losses},
                  out / "loss_curve.png", "layout judge training",
                  validation=("held-out pixel accuracy", [v["step"] for v in val], [v["pixel_accuracy"] for v in val]))
    if args.keep_state:
        save_state()
    else:
        state_path.unlink(missing_ok=True)
    print(f"done: {step} steps, train {train_time / 60:.1f} min, wall {log['wall_seconds'] / 60:.1f} min, "
          f"final loss {log['final_loss']:.3f}, {n_params / 1e6:.2f} M params, {log['weights_mb']} MB", flush=True)
    for name, summary in evaluation.items():
        per = ", ".join(f"{k} {v['accuracy']:.0%}" for k, v in summary["per_label"].items())
        print(f"held-out {name}: pixel accuracy {summary['pixel_accuracy']:.1%}, mean IoU {summary['mean_iou']:.3f} "
              f"[{per}]", flush=True)
    return log


if __name__ == "__main__":
    main()
