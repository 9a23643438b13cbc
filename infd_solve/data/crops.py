"""Crops of procedural scenes for training the domain CLIP and the layout judge (``recipes/train_clip.py``,
``recipes/train_judge.py``).

Every crop is drawn from its own generator (a seed and its index), so a pool is the same on every run and a
resumed run regenerates exactly what it had. Images are uint8 ``H x W x 3`` arrays (compact pools); training
seeds are below ``TEST_SEED_OFFSET``, held-out ones at or above it.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..io import atomic_path
from . import landscapes as L

DOMINANT = 0.6  # a crop "is" a label when that label covers >= 60 % of its pixels
# The sun and the moon are at most 0.13 of the canvas side, so random crops (sides >= 0.1) never show one
# large; without crops around them the CLIP cannot tell "the sun" at all. A disc in its glow covers about half
# of its bounding square, hence its own, lower threshold.
ORB_DOMINANT = 0.25
ORBS = (L.LABELS.index("sun"), L.LABELS.index("moon"))
JUDGE_KINDS = ("clean", "autoencoder", "upsampled")


def generator_version() -> str:
    """A short hash of the scene generator's source: cached pools made by another version are regenerated."""
    return hashlib.sha256(Path(L.__file__).read_bytes()).hexdigest()[:16]


def cached(cache: str | Path | None, key: str, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``make()``'s arrays, read from the ``.npz`` ``cache`` when it was written with the same ``key``, else made
    and (with a cache) written atomically with that key."""
    if cache and Path(cache).is_file():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == key:
                return {name: z[name] for name in z.files if name != "key"}
        print(f"{cache} was made with other settings, generator or model: regenerating", flush=True)
    arrays = make()
    if cache:
        with atomic_path(Path(cache)) as tmp, open(tmp, "wb") as f:
            np.savez(f, key=np.array(key), **arrays)
    return arrays


def to_tensor(rgb01: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` float in [0, 1] -> ``3 x H x W`` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb01)).permute(2, 0, 1).float() * 2 - 1


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``1 x 3 x H x W`` in [-1, 1] -> ``H x W x 3`` uint8."""
    return ((x[0].clamp(-1, 1) + 1) * 127.5 + 0.5).byte().permute(1, 2, 0).numpy()


def to_batch(images_u8: np.ndarray) -> torch.Tensor:
    """``N x H x W x 3`` uint8 -> ``N x 3 x H x W`` in [-1, 1]."""
    return torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 127.5 - 1


def random_scene(rng: np.random.Generator, split: str) -> L.Scene:
    lo, hi = (0, L.TEST_SEED_OFFSET) if split == "train" else (L.TEST_SEED_OFFSET, 2 * L.TEST_SEED_OFFSET)
    for _ in range(100):
        try:
            return L.sample_scene(int(rng.integers(lo, hi)))
        except ValueError:  # a few seeds have inconsistent parameters; draw another
            continue
    raise RuntimeError("could not sample a valid scene in 100 tries")


def log_uniform_box(rng: np.random.Generator, min_side: float, max_side: float = 1.0,
                    max_aspect: float = 1.5) -> tuple:
    """A box inside the canvas, scale log-uniform in [min_side, max_side], aspect up to ``max_aspect``."""
    scale = math.exp(rng.uniform(math.log(min_side), math.log(max_side)))
    aspect = math.exp(rng.uniform(-math.log(max_aspect), math.log(max_aspect)))
    w = min(max_side, max(min_side, scale * math.sqrt(aspect)))
    h = min(max_side, max(min_side, scale / math.sqrt(aspect)))
    x0, y0 = rng.uniform(0.0, 1.0 - w), rng.uniform(0.0, 1.0 - h)
    return (x0, y0, min(1.0, x0 + w), min(1.0, y0 + h))


def _dominant(labels: np.ndarray, orb_threshold: float = 1.0) -> int:
    frac = np.bincount(labels.ravel(), minlength=len(L.LABELS)) / labels.size
    orb = max(ORBS, key=lambda k: frac[k])
    if frac[orb] >= orb_threshold:
        return orb
    return int(frac.argmax()) if frac.max() >= DOMINANT else -1


def orb_box(rng: np.random.Generator, scene: L.Scene) -> tuple:
    """A square around the scene's sun or moon, side 1-2 of its diameter (log-uniform), centre jittered."""
    x, y, r = scene.orb
    side = 2 * r * math.exp(rng.uniform(0.0, math.log(2.0)))
    cx, cy = x + rng.uniform(-0.25, 0.25) * side, y + rng.uniform(-0.25, 0.25) * side
    x0 = min(max(cx - side / 2, 0.0), 1.0 - side)
    y0 = min(max(cy - side / 2, 0.0), 1.0 - side)
    return (x0, y0, x0 + side, y0 + side)


# ------------------------------------------------------------------------------ captioned crops (domain CLIP)
def captioned_crop(rng: np.random.Generator, size: int, split: str = "train", min_side: float = 0.1,
                   orb_crops: float = 0.0):
    """One ``(uint8 image, caption, dominant label index or -1)``; with probability ``orb_crops`` a square
    around the scene's sun or moon (:func:`orb_box`), else a random box."""
    scene = random_scene(rng, split)
    around_orb = rng.random() < orb_crops
    box = orb_box(rng, scene) if around_orb else log_uniform_box(rng, min_side)
    rgb, lab = L.render_scene(scene, box, (size, size))
    dominant = _dominant(lab, ORB_DOMINANT if around_orb else 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8), L.caption(scene, box, (size, size)), dominant


def captioned_pool(n: int, size: int, seed: int, cache: str | Path | None = None, orb_crops: float = 0.0):
    """``n`` captioned crops (crop i from ``[seed, i]``; a share ``orb_crops`` around the sun or moon):
    ``(images, captions, dominant labels)``."""
    def make():
        images = np.empty((n, size, size, 3), np.uint8)
        texts, dominant = [], np.empty(n, np.int64)
        for i in tqdm(range(n), desc="generating crops", leave=False, mininterval=2.0):
            rng = np.random.default_rng([seed, i])
            images[i], text, dominant[i] = captioned_crop(rng, size, orb_crops=orb_crops)
            texts.append(text)
        return {"images": images, "texts": np.array(texts), "dominant": dominant}

    z = cached(cache, f"{generator_version()}-{n}-{size}-{seed}" + (f"-orb{orb_crops}" if orb_crops else ""), make)
    return z["images"], [str(t) for t in z["texts"]], z["dominant"]


def dominated_crops(n: int, size: int, seed: int, max_tries: int | None = None, min_side: float = 0.1):
    """Up to ``n`` held-out crops dominated by one label: ``(uint8 images, label indices)``."""
    rng = np.random.default_rng(seed)
    images, labels, tries = [], [], 0
    while len(images) < n and (max_tries is None or tries < max_tries):
        tries += 1
        scene = random_scene(rng, "test")
        rgb, lab = L.render_scene(scene, log_uniform_box(rng, min_side), (size, size))
        if _dominant(lab) >= 0:
            images.append((rgb * 255.0 + 0.5).astype(np.uint8))
            labels.append(_dominant(lab))
    return np.stack(images), np.array(labels)


def orb_crops(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` held-out crops around a sun or moon that covers at least ``ORB_DOMINANT`` of them:
    ``(uint8 images, label indices)``."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    while len(images) < n:
        scene = random_scene(rng, "test")
        rgb, lab = L.render_scene(scene, orb_box(rng, scene), (size, size))
        if (label := _dominant(lab, ORB_DOMINANT)) in ORBS:
            images.append((rgb * 255.0 + 0.5).astype(np.uint8))
            labels.append(label)
    return np.stack(images), np.array(labels)


def caption_batch(rng, texts, dominant, batch_size, label_prob, prompts):
    """Indices and texts of one contrastive batch of a :func:`captioned_pool`, texts distinct as far as the pool
    allows: a crop dominated by one label takes its label's prompt (``prompts[label]``) with probability
    ``label_prob``, else its caption."""
    n = len(texts)
    idx, chosen, seen = [], [], set()
    candidates = rng.choice(n, size=min(n, 6 * batch_size), replace=False)
    use_label = rng.random(len(candidates)) < label_prob
    for c, ul in zip(candidates, use_label):
        t = prompts[dominant[c]] if (ul and dominant[c] >= 0) else texts[c]
        if t in seen:
            continue
        seen.add(t)
        idx.append(int(c))
        chosen.append(t)
        if len(idx) == batch_size:
            break
    for c in candidates:  # tiny pools: fill up with repeats
        if len(idx) == batch_size:
            break
        idx.append(int(c))
        chosen.append(texts[c])
    return np.array(idx), chosen


def to_clip_input(images_u8: np.ndarray, mean, std, flip: np.ndarray | None = None) -> torch.Tensor:
    """uint8 ``N x H x W x 3`` -> CLIP input normalized by ``mean``/``std``; rows where ``flip`` is set mirrored."""
    x = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 255.0
    if flip is not None and flip.any():
        f = torch.from_numpy(flip)
        x[f] = x[f].flip(-1)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# ------------------------------------------------------------------------------ labelled crops (layout judge)
def judge_box(rng: np.random.Generator, full_fraction: float) -> tuple:
    """The whole canvas (``full_fraction`` of the time), else a box with sides in [0.3, 1] (aspect <= 1.5)."""
    if rng.random() < full_fraction:
        return (0.0, 0.0, 1.0, 1.0)
    scale = math.exp(rng.uniform(math.log(0.3), 0.0))
    aspect = math.exp(rng.uniform(-math.log(1.5), math.log(1.5)))
    w, h = min(1.0, scale * math.sqrt(aspect)), min(1.0, scale / math.sqrt(aspect))
    x0, y0 = rng.uniform(0.0, 1.0 - w), rng.uniform(0.0, 1.0 - h)
    return (x0, y0, min(1.0, x0 + w), min(1.0, y0 + h))


def degraded(kind: str, scene: L.Scene, box, size: int, rng: np.random.Generator, model) -> np.ndarray:
    """The crop as a ``kind`` of image (uint8): the clean render, the scene seen through an INFD ``model``'s
    autoencoder (``None``: clean), or a render at 16-48 pixels upsampled bicubically."""
    if kind == "clean" or (kind == "autoencoder" and model is None):
        rgb, _ = L.render_scene(scene, box, (size, size))
        return (rgb * 255 + 0.5).astype(np.uint8)
    if kind == "autoencoder":
        small, _ = L.render_scene(scene, box, model.config.input_size)
        with torch.no_grad():
            return to_uint8(model.render(model.decode(model.encode(to_tensor(small)[None])), (size, size)))
    low = int(rng.integers(16, 49))
    rgb, _ = L.render_scene(scene, box, (low, low))
    return to_uint8(F.interpolate(to_tensor(rgb)[None], size=(size, size), mode="bicubic", align_corners=False))


def labelled_crop(seed: int, i: int, size: int, split: str, full_fraction: float, kind_probs, model):
    """Crop ``i``: ``(uint8 image, uint8 labels, kind index into JUDGE_KINDS)``, from its own generator."""
    rng = np.random.default_rng([seed, i, 0 if split == "train" else 1])
    lo = 0 if split == "train" else L.TEST_SEED_OFFSET
    scene = L.sample_scene(int(rng.integers(lo, lo + L.TEST_SEED_OFFSET)))
    box = judge_box(rng, full_fraction)
    kind = int(rng.choice(len(JUDGE_KINDS), p=kind_probs))
    _, labels = L.render_scene(scene, box, (size, size))
    return degraded(JUDGE_KINDS[kind], scene, box, size, rng, model), labels, kind


def labelled_pool(n: int, sizes, seed: int, full_fraction: float, kinds, model, model_id: str,
                  cache: str | Path | None = None) -> dict:
    """``{size: (images N x S x S x 3, labels N x S x S, kinds N)}``; crop i has size ``sizes[i % len]`` and
    its kind drawn with weights ``kinds``."""
    probs = np.array(kinds, float) / sum(kinds)

    def make():
        buckets = {s: ([], [], []) for s in sizes}
        for i in tqdm(range(n), desc="generating crops", mininterval=5.0):
            size = sizes[i % len(sizes)]
            for store, value in zip(buckets[size], labelled_crop(seed, i, size, "train", full_fraction, probs, model)):
                store.append(value)
        return {f"{name}_{s}": np.stack(v) if name != "kinds" else np.array(v)
                for s, values in buckets.items() for name, v in zip(("images", "labels", "kinds"), values)}

    key = f"{generator_version()}-{model_id}-{n}-{list(sizes)}-{seed}-{full_fraction}-{list(kinds)}"
    z = cached(cache, key, make)
    return {s: (z[f"images_{s}"], z[f"labels_{s}"], z[f"kinds_{s}"]) for s in sizes}


def labelled_scenes(n: int, size: int, kind: str, model, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` held-out whole scenes at ``size`` as ``kind`` images, with their labels (the same for a seed)."""
    rng = np.random.default_rng(seed)
    scene_seeds = rng.integers(L.TEST_SEED_OFFSET, 2 * L.TEST_SEED_OFFSET, n)
    images, labels = [], []
    for k, scene_seed in enumerate(scene_seeds):
        scene = L.sample_scene(int(scene_seed))
        full = (0.0, 0.0, 1.0, 1.0)
        images.append(degraded(kind, scene, full, size, np.random.default_rng([seed, k]), model))
        labels.append(L.render_scene(scene, full, (size, size))[1])
    return np.stack(images), np.stack(labels)


def jitter_and_blur(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
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
        x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k, groups=3)
        x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.transpose(-1, -2), groups=3)
    return x.clamp(-1, 1)


def labelled_batch(pool: dict, step: int, seed: int, sizes, batch_pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``step`` of a :func:`labelled_pool`: one size, as many crops as ``batch_pixels`` allow, flipped
    half of the time, jittered and blurred; ``(images in [-1, 1], int64 labels)``."""
    rng = np.random.default_rng([seed, 1, step])
    size = sizes[int(rng.integers(len(sizes)))]
    images, labels, _ = pool[size]
    n = max(2, min(len(images), batch_pixels // (size * size)))
    idx = np.sort(rng.choice(len(images), n, replace=False))
    x, y = to_batch(images[idx]), torch.from_numpy(labels[idx].astype(np.int64))
    flip = torch.from_numpy(rng.random(n) < 0.5)
    x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
    return jitter_and_blur(x, rng), y


def label_weights(pool: dict, classes: int) -> torch.Tensor:
    """Per-label loss weights (frequency ** -0.5, mean pixel weight 1), so small labels (sun, moon) count."""
    counts = sum(np.bincount(labels.ravel(), minlength=classes) for _, labels, _ in pool.values())
    freq = counts / counts.sum()
    w = (freq + 1e-4) ** -0.5
    return torch.from_numpy(w / (w * freq).sum()).float()
