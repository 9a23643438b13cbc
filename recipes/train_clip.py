"""Train the small domain CLIP shipped as ``infd_solve.pretrained`` ``default/clip`` (CPU, about 20 minutes).

Usage::

    python recipes/train_clip.py --threads 1                     # the shipped default -> pretrained/default/clip
    python recipes/train_clip.py --steps 800 --out outputs/clip  # longer, elsewhere
    python recipes/train_clip.py --resume                        # continue from <out>/train_state.pt

Data: crops of procedural landscapes (``infd_solve.data.landscapes``): a random training scene (seed below
``TEST_SEED_OFFSET``), a random box whose sides lie between 0.1 and 1.0 of the canvas (aspect 2:3..3:2, squashed
to a square, hence ``resize_mode "squash"``), rendered at the model's input size, with its ``caption``. Crops
dominated by one label (>= 60 % of the pixels) use that label's short prompt from ``label_captions()`` half of
the time, so zero-shot classification with those prompts works. ``--orb-crops``: a share of squares around the
sun or moon instead (the orb then "dominates" from ``ORB_DOMINANT`` of the pixels), since random crops never show
it large; the final log also scores held-out crops around the orb. A pool of ``--pool-size`` crops is generated
up front (deterministically from ``--seed``; crop i depends only on (seed, i)) and reused with horizontal flips.
Each batch holds distinct texts: ``open_clip.ClipLoss`` treats every other row as a negative, so two identical
captions in a batch would be pushed apart from each other's images.

The model is an open_clip ``CLIP`` built from a custom config (ViT 64 px / patch 8, text transformer with the
built-in BPE tokenizer, which works offline). The per-channel mean/std of the pool go into ``preprocess_cfg``.

Outputs in ``--out`` (default ``pretrained/default/clip``), each written atomically:
``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and ``open_clip_model.safetensors`` (fp16):
loadable by ``infd_solve.clip.load_clip(out)`` and by ``open_clip.create_model_and_transforms("local-dir:" + out)``;
``train_log.json`` (command line, steps, wall time, final loss, zero-shot accuracy) and ``loss_curve.png``.
``train_state.pt`` (model + optimizer, every ``--save-every`` steps) allows ``--resume``; it is deleted at the end
unless ``--keep-state``. The final zero-shot evaluation reloads the exported directory with ``load_clip`` and
classifies held-out crops (test seeds, one label >= 60 %) by the highest cosine to the ``label_captions()`` prompts.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from infd_solve.data import landscapes as L
from infd_solve.data.crops import (DOMINANT, ORB_DOMINANT, caption_batch, captioned_pool, dominated_crops, orb_crops,
                                   to_batch, to_clip_input)
from infd_solve.clip import WEIGHTS_FILE, load_clip, save_clip, zero_shot
from infd_solve.io import atomic_path
from infd_solve.training import (add_run_arguments, load_train_state, save_train_state, warmup_cosine_lr,
                                 weight_decay_groups)
from infd_solve.viz import plot_training

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "pretrained" / "default" / "clip"
STATE_FILE = "train_state.pt"

# heads of the vision tower = width / head_width (64 by default): 192 -> 3 heads.
# The text token embedding (49408 x width) dominates the size: width 64 keeps the fp16 file near 10 MB.
MODEL_CFGS = {
    "default": {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 192, "layers": 4},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
    },
    "tiny": {  # for tests: builds and steps in well under a second
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 1},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
}
EVAL_SEED = 2024        # held-out crops are the same for every run


# ----------------------------------------------------------------------------- data

# ----------------------------------------------------------------------------- training

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train_clip.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=650, help="optimizer steps (default 650)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay on matrices (default 0.1)")
    p.add_argument("--warmup", type=int, default=None, help="linear warmup steps (default steps/10, at most 100)")
    p.add_argument("--pool-size", type=int, default=12000, help="number of generated crops (default 12000)")
    p.add_argument("--pool-cache", default=None, metavar="NPZ",
                   help="reuse/write the generated pool here (keyed by size, seed and the generator's source)")
    p.add_argument("--orb-crops", type=float, default=0.0,
                   help="share of the pool centred on the sun or moon (sides 1-2 of its diameter), which random "
                        "crops never show large (default 0; see the model card)")
    p.add_argument("--label-prob", type=float, default=0.5,
                   help="probability of using the label prompt for a crop dominated by one label (default 0.5)")
    p.add_argument("--prompt-loss", type=float, default=0.5, metavar="W",
                   help="weight of an extra cross-entropy of dominated crops against the label_captions() prompts "
                        "(UniCL-style: the same text may be the positive of many images) (default 0.5)")
    p.add_argument("--eval-crops", type=int, default=500, help="held-out crops for zero-shot accuracy (default 500)")
    p.add_argument("--config", choices=sorted(MODEL_CFGS), default="default", help="model size (default: default)")
    p.add_argument("--tiny", action="store_const", const="tiny", dest="config", help="same as --config tiny")
    add_run_arguments(p, DEFAULT_OUT, save_every=100)
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    return p


def main(argv: list[str] | None = None) -> dict:
    import open_clip
    from open_clip.model import CLIP

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 2 or args.pool_size < args.batch_size:
        parser.error("need --steps >= 1, --batch-size >= 2 and --pool-size >= --batch-size")
    if not 0.0 <= args.orb_crops <= 1.0:
        parser.error(f"--orb-crops is a share of the pool, between 0 and 1; got {args.orb_crops}")
    command = shlex.join([sys.executable, *(sys.argv if argv is None else [str(Path(__file__)), *argv])])
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_cfg = json.loads(json.dumps(MODEL_CFGS[args.config]))
    size = model_cfg["vision_cfg"]["image_size"]
    t_start = time.time()

    # Data (deterministic in --seed, so a resumed run regenerates the same pool).
    images, texts, dominant = captioned_pool(args.pool_size, size, args.seed, args.pool_cache, args.orb_crops)
    pix = images.reshape(-1, 3).astype(np.float64) / 255.0
    mean = tuple(round(float(v), 4) for v in pix.mean(0))
    std = tuple(round(float(v), 4) for v in pix.std(0))
    del pix
    t_data = time.time() - t_start
    names = L.LABELS
    prompts = [L.label_captions()[name] for name in names]
    print(f"pool: {args.pool_size} crops in {t_data:.0f} s, {len(set(texts))} distinct captions, "
          f"{(dominant >= 0).mean():.0%} dominated by one label; mean {mean} std {std}", flush=True)

    torch.manual_seed(args.seed)
    model = CLIP(**model_cfg).to(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(weight_decay_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = open_clip.ClipLoss()
    # What open_clip.get_tokenizer("local-dir:" + out) gives for this config (no hf_tokenizer_name): the built-in
    # BPE SimpleTokenizer, whose vocabulary ships inside the package (offline).
    tokenizer = open_clip.SimpleTokenizer(context_length=model_cfg["text_cfg"]["context_length"])
    prompt_tokens = tokenizer(prompts).to(args.device)
    losses, prompt_losses, step, train_time = [], [], 0, 0.0
    state_path = out / STATE_FILE
    try:
        state = load_train_state(state_path, args.resume, {"model_cfg": model_cfg, "steps": args.steps})
    except ValueError as e:
        parser.error(str(e))
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        losses, step, train_time = list(state["losses"]), int(state["step"]), float(state["train_time"])
        prompt_losses = list(state.get("prompt_losses", []))

    def save_state():
        save_train_state(state_path, model=model.state_dict(), optimizer=opt.state_dict(), step=step, losses=losses,
                         prompt_losses=prompt_losses, train_time=train_time, model_cfg=model_cfg, steps=args.steps)

    model.train()
    bar = tqdm(total=args.steps, initial=step, desc="train clip", mininterval=5.0)
    t0 = time.time()
    while step < args.steps:
        rng = np.random.default_rng([args.seed, 1, step])
        idx, batch_texts = caption_batch(rng, texts, dominant, args.batch_size, args.label_prob, prompts)
        x = to_clip_input(images[idx], mean, std, flip=rng.random(len(idx)) < 0.5).to(args.device)
        tokens = tokenizer(batch_texts).to(args.device)
        for g in opt.param_groups:
            g["lr"] = warmup_cosine_lr(step, args.steps, args.lr, args.warmup)
        img_f, txt_f, scale = model(x, tokens)
        loss = loss_fn(img_f, txt_f, scale)
        total = loss
        dom = torch.from_numpy(dominant[idx]).to(args.device)
        if args.prompt_loss > 0 and (dom >= 0).any():
            prompt_f = F.normalize(model.encode_text(prompt_tokens), dim=-1)
            p_loss = F.cross_entropy(scale * img_f[dom >= 0] @ prompt_f.T, dom[dom >= 0])
            total = loss + args.prompt_loss * p_loss
            prompt_losses.append(p_loss.item())
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
        if step % args.save_every == 0 and step < args.steps:
            train_time += time.time() - t0
            t0 = time.time()
            save_state()
    bar.close()
    train_time += time.time() - t0
    model.eval()

    preprocess_cfg = {"size": size, "mean": list(mean), "std": list(std), "interpolation": "bicubic",
                      "resize_mode": "squash"}
    save_clip(model, model_cfg, preprocess_cfg, out)
    exported = load_clip(out, device=args.device)  # scored as users will load it
    images, labels = dominated_crops(args.eval_crops, exported.size, EVAL_SEED)
    accuracy, per_label = zero_shot(exported, to_batch(images), torch.from_numpy(labels),
                                    [L.label_captions()[name] for name in L.LABELS])
    per_class = {L.LABELS[k]: v for k, v in per_label.items()}
    images, labels = orb_crops(args.eval_crops // 2, exported.size, EVAL_SEED)
    orb_accuracy, _ = zero_shot(exported, to_batch(images), torch.from_numpy(labels),
                                [L.label_captions()[name] for name in L.LABELS])
    final = float(np.mean(losses[-20:]))
    log = {
        "command": command,
        "args": vars(args),
        "model_cfg": model_cfg,
        "preprocess_cfg": preprocess_cfg,
        "params": n_params,
        "weights_mb": round((out / WEIGHTS_FILE).stat().st_size / 2**20, 2),
        "steps": step,
        "batch_size": args.batch_size,
        "pool": {"crops": args.pool_size, "distinct_captions": len(set(texts)),
                 "dominant_fraction": float((dominant >= 0).mean()), "seconds": round(t_data, 1)},
        "train_seconds": round(train_time, 1),
        "wall_seconds": round(time.time() - t_start, 1),
        "final_loss": round(final, 4),
        "final_prompt_loss": round(float(np.mean(prompt_losses[-20:])), 4) if prompt_losses else None,
        "zero_shot": {"top1": round(accuracy, 4), "crops": args.eval_crops, "dominant_fraction": DOMINANT,
                      "prompts": dict(zip(names, prompts)), "per_class": per_class,
                      "orb_top1": round(orb_accuracy, 4), "orb_eval_crops": len(labels),
                      "orb_dominant_fraction": ORB_DOMINANT},
        "threads": torch.get_num_threads(),
    }
    with atomic_path(out / "train_log.json") as tmp:
        tmp.write_text(json.dumps(log, indent=2) + "\n")
    curves = {"step": list(range(1, len(losses) + 1)), "loss": losses}
    if len(prompt_losses) == len(losses):
        curves["prompt loss"] = prompt_losses
    plot_training(curves, out / "loss_curve.png", "domain CLIP training", log=False)
    if args.keep_state:
        save_state()
    else:
        state_path.unlink(missing_ok=True)
    per = ", ".join(f"{k} {v['accuracy']:.0%} ({v['n']})" for k, v in per_class.items())
    print(f"done: {step} steps, train {train_time / 60:.1f} min, wall {log['wall_seconds'] / 60:.1f} min, "
          f"final loss {final:.3f}, {n_params / 1e6:.2f} M params, {log['weights_mb']} MB", flush=True)
    print(f"zero-shot top-1 on {args.eval_crops} held-out crops: {accuracy:.1%}  [{per}]", flush=True)
    print(f"zero-shot top-1 on {len(labels)} held-out crops around the sun or moon: {orb_accuracy:.1%}", flush=True)
    return log


if __name__ == "__main__":
    main()
