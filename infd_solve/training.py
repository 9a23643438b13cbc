"""The pieces the training recipes share: example sources, batching, the discriminator, checkpoint adaptation
resumable training states and training logs (``recipes/train_autoencoder.py``, ``train_diffusion.py``,
``train_clip.py``, ``train_judge.py``).

An example is ``(x, gt, box)``: the whole image at the encoder's input size, a ``patch x patch`` crop of the
ground truth at a random resolution (log-uniform, paper §4.1), and that crop's box in canvas fractions.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from .data import LandscapeDataset, render_scene, sample_scene
from .data.crops import to_tensor
from .io import atomic_path
from .models.renderer import COORD_CHANNELS

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


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
        res = random_resolution(rng, max(self.input_size, self.patch), top_res)
        box = random_crop_box(rng, res, self.patch)
        gt, _ = render_scene(scene, box, (self.patch, self.patch))
        return to_tensor(x), to_tensor(gt), torch.tensor(box)


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
        res = random_resolution(rng, max(self.input_size, self.patch), min(self.max_res, side))
        box = random_crop_box(rng, res, self.patch)
        full = im.resize((res, res), Image.Resampling.BOX) if res != side else im
        l, t = round(box[0] * res), round(box[1] * res)
        gt = full.crop((l, t, l + self.patch, t + self.patch))
        as01 = lambda img: np.asarray(img, dtype=np.float32) / 255
        return to_tensor(as01(x)), to_tensor(as01(gt)), torch.tensor(box)


def random_resolution(rng, low, high) -> int:
    """Log-uniform, so every scale octave gets the same share of training."""
    if high <= low:
        return int(low)
    return int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))


def random_crop_box(rng, res, patch):
    i, j = rng.integers(0, res - patch + 1, size=2)
    return (j / res, i / res, (j + patch) / res, (i + patch) / res)


class Batches(torch.utils.data.IterableDataset):
    def __init__(self, source, batch_size, seed):
        self.source, self.batch_size, self.seed = source, batch_size, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        seeds = list(self.seed) if isinstance(self.seed, (list, tuple)) else [self.seed]  # flat: numpy 2.x
        rng = np.random.default_rng(seeds + [info.id if info else 0])
        while True:
            xs, gts, boxes = zip(*(self.source.example(rng) for _ in range(self.batch_size)))
            yield torch.stack(xs), torch.stack(gts), torch.stack(boxes)


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


def _render_input(seed_and_size):
    seed, size = seed_and_size
    return render_scene(sample_scene(seed), size=size)[0]


@torch.no_grad()
def encode_scenes(model, num_scenes: int, batch: int = 64, mirror: bool = False, workers: int = 1) -> torch.Tensor:
    """Latents of procedural scenes ``0 .. num_scenes - 1`` at the model's input size (diffusion training data),
    on the model's device; ``workers`` processes render the scenes.

    ``mirror``: also the latents of their mirror images (left-right), after them: ``2 * num_scenes`` in all.
    A mirrored scene is encoded, not its latent flipped: an encoder is not flip-equivariant, and a flipped
    latent is one the encoder never makes (see ``recipes/train_diffusion.py``).
    """
    jobs = [(s, model.config.input_size) for s in range(num_scenes)]
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    images = pool.imap(_render_input, jobs, chunksize=16) if pool else map(_render_input, jobs)
    latents, mirrored = [], []
    try:
        for start in tqdm(range(0, num_scenes, batch), desc="encoding latents"):
            chunk = [next(images) for _ in range(min(batch, num_scenes - start))]
            x = torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).to(model.device, model.dtype) * 2 - 1
            latents.append(model.encode(x))
            if mirror:
                mirrored.append(model.encode(x.flip(-1)))
    finally:
        if pool:
            pool.terminate()
    return torch.cat(latents + mirrored)


def weight_decay_groups(model, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: decay on weight matrices only."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        # as open_clip's trainer: no decay on gains, biases, norms, logit scale, embeddings of positions/tokens
        if p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name \
                or "embedding" in name or "class_embedding" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def warmup_cosine_lr(step: int, steps: int, lr: float, warmup: int | None = None) -> float:
    """Linear warmup over ``warmup`` steps (default a tenth of the run, at most 100), then cosine decay to 5 %."""
    warm = warmup if warmup is not None else max(1, min(100, steps // 10))
    if step < warm:
        return lr * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


def _minutes(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of minutes, got {text}")
    return value


def add_device_arguments(parser) -> None:
    """``--device`` (checked by :func:`infd_solve.cli.resolve_device`) and ``--time-limit`` (see
    :func:`deadline`): where a training recipe runs, and for how long at most."""
    parser.add_argument("--device", help="where to train: cpu, cuda, cuda:N (default: cuda when available)")
    parser.add_argument("--time-limit", type=_minutes, metavar="MINUTES",
                        help="stop after this much training time with a complete model (continue with --resume)")


def deadline(minutes: float | None) -> float:
    """The ``time.time()`` at which a run given ``--time-limit minutes`` stops (never, without one)."""
    return time.time() + 60 * minutes if minutes else math.inf


def add_run_arguments(parser, default_out, save_every: int) -> None:
    """The options every resumable training recipe takes: ``--out``, ``--seed``, ``--threads``,
    ``--save-every``, ``--resume``, ``--keep-state``."""
    parser.add_argument("--out", default=str(default_out), help=f"output directory (default {default_out})")
    parser.add_argument("--seed", type=int, default=0, help="seed for data and initialisation (default 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--save-every", type=int, default=save_every,
                        help=f"write train_state.pt every N steps (default {save_every})")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/train_state.pt")
    parser.add_argument("--keep-state", action="store_true", help="keep train_state.pt after training")


def load_train_state(path: Path, resume: bool, must_match: dict | None = None) -> dict | None:
    """What ``--resume`` continues: the state saved at ``path`` (read by the safe loader, like every checkpoint),
    or ``None`` to start from scratch, saying why when a state is missing or left alone. ``must_match``: entries
    the state must have (model config, planned steps); another run's state raises ``ValueError``."""
    from .checkpoints import load_torch_file

    path = Path(path)
    if not resume:
        if path.is_file():
            print(f"note: ignoring existing {path} (pass --resume to continue it)", flush=True)
        return None
    if not path.is_file():
        print(f"--resume: no {path}, starting from scratch", flush=True)
        return None
    state = load_torch_file(path, "training state")
    for key, value in (must_match or {}).items():
        if state.get(key) != value:
            raise ValueError(f"{path} was written by another run ({key} {state.get(key)!r}, here {value!r}); "
                             "start over without --resume")
    print(f"resumed from {path} at step {state['step']}", flush=True)
    return state


def save_train_state(path: Path, **state) -> None:
    """Write a training state atomically (an interrupted save never replaces the last good one); paths become
    strings, so :func:`load_train_state` reads it with the weights-only loader."""
    plain = {k: ({a: str(b) if isinstance(b, Path) else b for a, b in v.items()} if isinstance(v, dict) else
                 str(v) if isinstance(v, Path) else v) for k, v in state.items()}
    with atomic_path(Path(path)) as tmp:
        torch.save(plain, tmp)


def write_train_log(out: Path, argv, **fields) -> dict:
    """``OUT/train_log.json``: the exact command line plus ``fields``, written atomically and printed."""
    command = " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:]))
    log = {"command": command, **fields}
    with atomic_path(out / "train_log.json") as tmp:
        tmp.write_text(json.dumps(log, indent=2) + "\n")
    print(json.dumps(log, indent=2))
    return log
