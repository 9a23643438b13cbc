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
from infd_solve.io import atomic_path, save_figure
from infd_solve.judge import CONFIG_FILE, WEIGHTS_FILE, JudgeConfig, JudgeNet, load_judge
from infd_solve.training import load_train_state, save_train_state

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "pretrained" / "default" / "judge"
STATE_FILE = "train_state.pt"
CHANNELS = {"default": (24, 48, 96, 128, 128), "tiny": (8, 8, 16)}  # tiny: for tests
STEM = {"default": 12, "tiny": 4}
KINDS = ("clean", "autoencoder", "upsampled")
EVAL_SEED = 2025  # the held-out scenes are the same for every run


# ----------------------------------------------------------------------------- data

def random_box(rng: np.random.Generator, full_fraction: float) -> tuple:
    """The whole canvas (``full_fraction`` of the time), else a box with sides in [0.3, 1] (aspect <= 1.5)."""
    if rng.random() < full_fraction:
        return (0.0, 0.0, 1.0, 1.0)
    scale = math.exp(rng.uniform(math.log(0.3), 0.0))
    aspect = math.exp(rng.uniform(-math.log(1.5), math.log(1.5)))
    w, h = min(1.0, scale * math.sqrt(aspect)), min(1.0, scale / math.sqrt(aspect))
    x0, y0 = rng.uniform(0.0, 1.0 - w), rng.uniform(0.0, 1.0 - h)
    return (x0, y0, min(1.0, x0 + w), min(1.0, y0 + h))


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """H x W x 3 float [0, 1] or uint8 -> 1 x 3 x H x W in [-1, 1]."""
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    return x / 127.5 - 1 if rgb.dtype == np.uint8 else x * 2 - 1


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """1 x 3 x H x W in [-1, 1] -> H x W x 3 uint8."""
    return ((x[0].clamp(-1, 1) + 1) * 127.5 + 0.5).byte().permute(1, 2, 0).numpy()


def degraded(kind: str, scene: L.Scene, box, size: int, rng: np.random.Generator, model) -> np.ndarray:
    """The crop as the ``kind`` of image: clean render, through the autoencoder, or upsampled (uint8)."""
    if kind == "clean" or (kind == "autoencoder" and model is None):
        rgb, _ = L.render_scene(scene, box, (size, size))
        return (rgb * 255 + 0.5).astype(np.uint8)
    if kind == "autoencoder":
        small, _ = L.render_scene(scene, box, model.config.input_size)
        with torch.no_grad():
            return to_uint8(model.render(model.decode(model.encode(to_tensor(small))), (size, size)))
    low = int(rng.integers(16, 49))
    rgb, _ = L.render_scene(scene, box, (low, low))
    up = F.interpolate(to_tensor(rgb), size=(size, size), mode="bicubic", align_corners=False)
    return to_uint8(up)


def sample(seed: int, i: int, size: int, split: str, full_fraction: float, kind_probs, model):
    """Crop ``i``: (uint8 image, uint8 labels, kind index), from its own generator."""
    rng = np.random.default_rng([seed, i, 0 if split == "train" else 1])
    lo = 0 if split == "train" else L.TEST_SEED_OFFSET
    scene = L.sample_scene(int(rng.integers(lo, lo + L.TEST_SEED_OFFSET)))
    box = random_box(rng, full_fraction)
    kind = int(rng.choice(len(KINDS), p=kind_probs))
    _, labels = L.render_scene(scene, box, (size, size))
    return degraded(KINDS[kind], scene, box, size, rng, model), labels, kind


def make_pool(args, model) -> dict:
    """``{size: (images N x S x S x 3, labels N x S x S, kinds N)}``; crop i has size ``sizes[i % len]``."""
    sizes = args.sizes
    probs = np.array(args.kinds, float) / sum(args.kinds)
    buckets = {s: ([], [], []) for s in sizes}
    for i in tqdm(range(args.pool_size), desc="generating crops", mininterval=5.0):
        size = sizes[i % len(sizes)]
        image, labels, kind = sample(args.seed, i, size, "train", args.full_fraction, probs, model)
        for store, value in zip(buckets[size], (image, labels, kind)):
            store.append(value)
    return {s: (np.stack(a), np.stack(b), np.array(c)) for s, (a, b, c) in buckets.items()}


def pool_key(args, model_id: str) -> str:
    source = hashlib.sha256(Path(L.__file__).read_bytes()).hexdigest()[:16]
    return (f"{source}-{model_id}-{args.pool_size}-{args.sizes}-{args.seed}-{args.full_fraction}-"
            f"{args.kinds}")


def load_or_make_pool(args, model, model_id: str) -> dict:
    """``make_pool``, optionally cached in an .npz that records what it was made from."""
    key = pool_key(args, model_id)
    cache = args.pool_cache
    if cache and Path(cache).is_file():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == key:
                return {s: (z[f"images_{s}"], z[f"labels_{s}"], z[f"kinds_{s}"]) for s in args.sizes}
        print(f"{cache} was made with other settings, generator or model: regenerating", flush=True)
    pool = make_pool(args, model)
    if cache:
        arrays = {f"{name}_{s}": v for s, values in pool.items()
                  for name, v in zip(("images", "labels", "kinds"), values)}
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, key=np.array(key), **arrays)
    return pool


def augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Brightness/contrast jitter and blur (generated images are softer and shifted in tone)."""
    b = x.shape[0]
    gain = torch.from_numpy(rng.uniform(0.85, 1.15, (b, 1, 1, 1))).float()
    bias = torch.from_numpy(rng.uniform(-0.08, 0.08, (b, 1, 1, 1))).float()
    x = torch.where(torch.from_numpy(rng.random((b, 1, 1, 1)) < 0.5), x * gain + bias, x)
    if rng.random() < 0.3:
        sigma = rng.uniform(0.5, 0.5 + x.shape[-1] / 128)
        radius = max(1, int(3 * sigma))
        k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1).float() / sigma) ** 2)
        k = (k / k.sum()).view(1, 1, 1, -1).expand(3, 1, 1, -1)
        x = F.pad(x, (radius, radius, 0, 0), mode="replicate")
        x = F.conv2d(x, k, groups=3)
        x = F.pad(x, (0, 0, radius, radius), mode="replicate")
        x = F.conv2d(x, k.transpose(-1, -2), groups=3)
    return x.clamp(-1, 1)


def batch(pool: dict, step: int, args) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng([args.seed, 1, step])
    size = args.sizes[int(rng.integers(len(args.sizes)))]
    images, labels, _ = pool[size]
    n = max(2, min(len(images), args.batch_pixels // (size * size)))
    idx = np.sort(rng.choice(len(images), n, replace=False))
    x, y = to_batch(images[idx]), torch.from_numpy(labels[idx].astype(np.int64))
    flip = torch.from_numpy(rng.random(n) < 0.5)
    x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
    return augment(x, rng), y


def to_batch(images_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 127.5 - 1


# ----------------------------------------------------------------------------- evaluation

def eval_set(n: int, size: int, kind: str, model) -> tuple[np.ndarray, np.ndarray]:
    """``n`` held-out whole scenes at ``size`` as ``kind`` images, with labels (the same scenes every run)."""
    rng = np.random.default_rng(EVAL_SEED)
    seeds = rng.integers(L.TEST_SEED_OFFSET, 2 * L.TEST_SEED_OFFSET, n)
    images, labels = [], []
    for k, seed in enumerate(seeds):
        scene = L.sample_scene(int(seed))
        images.append(degraded(kind, scene, (0.0, 0.0, 1.0, 1.0), size, np.random.default_rng([EVAL_SEED, k]), model))
        labels.append(L.render_scene(scene, (0.0, 0.0, 1.0, 1.0), (size, size))[1])
    return np.stack(images), np.stack(labels)


def confusion(judge_or_net, images: np.ndarray, labels: np.ndarray, classes: int, chunk: int = 8) -> np.ndarray:
    """``classes x classes`` pixel counts (rows: truth, columns: prediction)."""
    net = getattr(judge_or_net, "net", judge_or_net)
    counts = np.zeros((classes, classes), np.int64)
    with torch.no_grad():
        for i in range(0, len(images), chunk):
            pred = net(to_batch(images[i:i + chunk])).argmax(1).numpy().ravel()
            truth = labels[i:i + chunk].astype(np.int64).ravel()
            counts += np.bincount(truth * classes + pred, minlength=classes * classes).reshape(classes, classes)
    return counts


def summarize(counts: np.ndarray, names) -> dict:
    """Pixel accuracy, per-label accuracy (recall: share of that label's pixels labelled right) and IoU."""
    diag = np.diag(counts).astype(float)
    truth, pred = counts.sum(1), counts.sum(0)
    per = {}
    for k, name in enumerate(names):
        if truth[k]:
            per[name] = {"pixels": int(truth[k]), "accuracy": round(diag[k] / truth[k], 4),
                         "iou": round(diag[k] / (truth[k] + pred[k] - diag[k]), 4)}
    return {"pixel_accuracy": round(diag.sum() / counts.sum(), 4),
            "mean_accuracy": round(float(np.mean([v["accuracy"] for v in per.values()])), 4),
            "mean_iou": round(float(np.mean([v["iou"] for v in per.values()])), 4), "per_label": per}


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
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--seed", type=int, default=0, help="seed for data and initialisation (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--save-every", type=int, default=250, help="write train_state.pt every N steps (default 250)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/train_state.pt")
    p.add_argument("--keep-state", action="store_true", help="keep train_state.pt after training")
    return p


def lr_at(step: int, args) -> float:
    warm = max(1, min(100, args.steps // 10))
    if step < warm:
        return args.lr * (step + 1) / warm
    t = (step - warm) / max(1, args.steps - warm)
    return args.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


def class_weights(pool: dict, classes: int) -> torch.Tensor:
    counts = sum(np.bincount(labels.ravel(), minlength=classes) for _, labels, _ in pool.values())
    freq = counts / counts.sum()
    w = (freq + 1e-4) ** -0.5
    return torch.from_numpy(w / (w * freq).sum()).float()  # mean pixel weight 1


def export(net: JudgeNet, out: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in net.state_dict().items()}
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "producer": "infd-solve recipes/train_judge.py"})
    with atomic_path(out / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(net.config.to_dict(), indent=2) + "\n")


def plot_curves(losses: list, val: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.5, alpha=0.35, label="loss")
    if len(losses) >= 10:
        k = max(5, len(losses) // 40)
        ax.plot(steps[k - 1:], np.convolve(losses, np.ones(k) / k, mode="valid"), lw=1.5, label=f"mean of {k}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("weighted cross-entropy")
    ax.grid(alpha=0.3)
    if val:
        twin = ax.twinx()
        twin.plot([v["step"] for v in val], [v["pixel_accuracy"] for v in val], "o-", color="C3", ms=3,
                  label="held-out pixel accuracy")
        twin.set_ylabel("held-out pixel accuracy")
        twin.legend(loc="center right", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("layout judge training")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


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
    pool = load_or_make_pool(args, model, model_id)
    t_data = time.time() - t_start
    names = L.LABELS
    weights = class_weights(pool, len(names))
    print(f"pool: {args.pool_size} crops at {args.sizes} in {t_data:.0f} s; class weights "
          + ", ".join(f"{n} {w:.2f}" for n, w in zip(names, weights.tolist())), flush=True)
    val_images, val_labels = eval_set(min(48, args.eval_scenes), 128, "autoencoder", model)

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
        x, y = batch(pool, step, args)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
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
            val.append({"step": step, **{k: v for k, v in summarize(
                confusion(net, val_images, val_labels, len(names)), names).items() if k != "per_label"}})
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
    export(net, out)

    judge = load_judge(out)  # what users get: the exported fp16 weights
    evaluation = {}
    for size in (256, 64):
        for kind in ("clean", "autoencoder"):
            images, labels = eval_set(args.eval_scenes, size, kind, model)
            evaluation[f"{kind} {size}"] = summarize(confusion(judge, images, labels, len(names)), names)
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
    plot_curves(losses, val, out / "loss_curve.png")
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
