"""Procedural landscapes as a continuous-image dataset.

A scene (``sample_scene(seed)``) is a small set of parameters; ``render`` evaluates
it at the pixel centres of any axis-aligned box of the unit canvas (x right, y down),
so the same scene can be rendered at any resolution or crop without ever rendering
the whole image.  Everything is antialiased for the requested pixel size (the
"cell"), aiming at the pixel's box-filter average:

* every value-noise octave is averaged exactly over the cell (closed form), and
  octaves whose wavelength (~2 lattice spacings) drops from 2 cells to 1 cell fade
  out smoothly; fbm amplitudes are normalised over *all* octaves, so dropping fine
  octaves only removes detail;
* hard edges (ridge lines, tree lines, sun disc, water line) are linear ramps whose
  width is the pixel footprint across the edge, i.e. the box-filter coverage;
  thresholds of noise (cloud, snow edges) also widen by the dropped detail;
* stars are integrated exactly over each pixel box.

Hence rendering at 4x and averaging 4x4 blocks matches rendering at 1x (measured in
``tests/test_landscapes.py`` and ``recipes/bench_landscapes.py``).

Output convention: ``rgb`` is float32 (H, W, 3) in [0, 1] (the torch side maps it to
[-1, 1]); ``labels`` is uint8 (H, W) indexing ``LABELS``: the topmost layer whose
coverage at the pixel centre is > 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "LABELS",
    "Scene",
    "sample_scene",
    "render_scene",
    "scene_tensor",
    "caption",
    "label_captions",
    "LandscapeDataset",
    "TEST_SEED_OFFSET",
]

LABELS = ("sky", "cloud", "sun", "moon", "mountain", "snow", "forest", "grass", "water", "fog")
SKY, CLOUD, SUN, MOON, MOUNTAIN, SNOW, FOREST, GRASS, WATER, FOG = range(len(LABELS))

TIMES = ("day", "sunset", "night")

# Per time of day: sky gradient stops (top, middle, horizon), surface light tint,
# sun/moon colour, glow strength, cloud (lit, shadow) colours, snow colour.
_TIME_STYLE = {
    "day": dict(
        sky=((0.20, 0.40, 0.78), (0.42, 0.62, 0.90), (0.74, 0.84, 0.95)),
        light=(1.0, 0.98, 0.93), orb=(1.0, 0.97, 0.86), glow=0.30,
        cloud=((1.0, 1.0, 1.0), (0.60, 0.64, 0.74)), snow=(0.95, 0.96, 1.0)),
    "sunset": dict(
        sky=((0.15, 0.17, 0.42), (0.76, 0.42, 0.45), (1.0, 0.70, 0.38)),
        light=(1.0, 0.70, 0.52), orb=(1.0, 0.90, 0.62), glow=0.55,
        cloud=((1.0, 0.70, 0.52), (0.40, 0.26, 0.38)), snow=(1.0, 0.80, 0.74)),
    "night": dict(
        sky=((0.01, 0.015, 0.05), (0.04, 0.06, 0.13), (0.10, 0.13, 0.24)),
        light=(0.28, 0.33, 0.48), orb=(0.93, 0.93, 0.86), glow=0.22,
        cloud=((0.30, 0.32, 0.40), (0.08, 0.09, 0.13)), snow=(0.38, 0.43, 0.58)),
}

TEST_SEED_OFFSET = 1_000_000_000  # held-out scenes use seeds >= this


@dataclass(frozen=True)
class Scene:
    """Parameters of one landscape (all positions in canvas fractions, y down)."""

    seed: int
    time: str                 # "day" | "sunset" | "night"
    horizon: float            # y where mountains meet the ground
    sky: tuple                # (top, middle, horizon) RGB gradient stops
    orb: tuple                # (x, y, radius) of the sun (moon at night)
    cloud: tuple              # (cover in [0, 1], base frequency)
    ridges: tuple             # far to near: (base_y, amplitude, frequency, haze)
    snow_line: float          # snow where y < snow_line (perturbed by noise)
    rock: tuple               # rock RGB before lighting
    forest: tuple | None      # far tree line (top_y, tree period, tree height)
    lake: float | None        # water line y
    near_forest: tuple | None  # foreground tree line (top_y, period, height)
    grass: float              # top of the foreground grass band
    fog: tuple | None         # (density, centre_y, half-thickness)


def sample_scene(seed: int) -> Scene:
    """Draw a scene deterministically from ``seed``."""
    seed = int(seed)
    rng = np.random.default_rng(seed)
    u = rng.random()
    time = "day" if u < 0.45 else "sunset" if u < 0.75 else "night"
    style = _TIME_STYLE[time]
    horizon = float(rng.uniform(0.56, 0.70))
    sky = tuple(tuple(float(v) for v in np.clip(np.array(c) * rng.uniform(0.9, 1.1, 3), 0, 1))
                for c in style["sky"])

    if time == "day":
        orb = (rng.uniform(0.12, 0.88), rng.uniform(0.08, 0.28), rng.uniform(0.030, 0.045))
    elif time == "sunset":  # low sun, often half hidden by the ridges
        orb = (rng.uniform(0.15, 0.85), horizon - rng.uniform(0.12, 0.30), rng.uniform(0.04, 0.065))
    else:
        orb = (rng.uniform(0.12, 0.88), rng.uniform(0.08, 0.30), rng.uniform(0.025, 0.040))
    orb = tuple(float(v) for v in orb)

    cover = rng.uniform(0.0, 0.6 if time == "night" else 1.0) if rng.random() > 0.2 else 0.0
    cloud = (float(cover), float(rng.uniform(2.0, 4.0)))

    n = int(rng.integers(2, 5))  # 2..4 ridges
    ridges = []
    for k in range(n):
        d = k / (n - 1)  # 0 = farthest, 1 = nearest
        base = horizon - rng.uniform(0.16, 0.26) * (1.0 - 0.55 * d)
        amp = rng.uniform(0.07, 0.13) * (1.0 - 0.4 * d)
        freq = rng.uniform(1.6, 3.0) * (1.0 + 0.6 * d)
        haze = 0.06 + 0.45 * (1.0 - d)
        ridges.append((float(base), float(amp), float(freq), float(haze)))
    top = min(r[0] - r[1] for r in ridges)  # roughly the highest peaks
    snow_line = float(top + rng.uniform(0.04, 0.12)) if rng.random() < 0.85 else -1.0
    rock = tuple(float(v) for v in np.array((0.42, 0.39, 0.36)) * rng.uniform(0.85, 1.15, 3))

    forest = None
    if rng.random() < 0.8:
        period = rng.uniform(0.014, 0.024)
        forest = (float(horizon - rng.uniform(0.0, 0.03)), float(period), float(period * rng.uniform(1.8, 3.0)))
    lake = float(horizon + rng.uniform(0.005, 0.03)) if rng.random() < 0.5 else None
    if lake is not None:
        grass = float(rng.uniform(0.86, 0.95))
    else:
        grass = float(rng.uniform(0.80, 0.92))
    near_forest = None
    if lake is None and rng.random() < 0.6:
        period = rng.uniform(0.03, 0.055)
        near_forest = (float(rng.uniform(horizon + 0.04, max(horizon + 0.05, grass - 0.08))), float(period),
                       float(period * rng.uniform(1.6, 2.6)))
    fog = None
    if rng.random() < 0.35:
        fog = (float(rng.uniform(0.45, 0.85)), float(horizon - rng.uniform(0.0, 0.08)),
               float(rng.uniform(0.04, 0.10)))
    return Scene(seed, time, horizon, sky, orb, cloud, tuple(ridges), snow_line, rock,
                 forest, lake, near_forest, grass, fog)


# ----------------------------------------------------------------------------- noise

_LAC = 1.97  # lacunarity slightly off 2 so octave lattices never line up


def _salt(seed: int, layer: int) -> int:
    return (seed * 0x9E3779B1 + layer * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF


def _hash(ix, iy, salt):
    """Integer lattice points -> float32 uniform in [-1, 1)."""
    h = (ix.astype(np.uint32) * np.uint32(0x8DA6B343)) ^ (iy.astype(np.uint32) * np.uint32(0xD8163841))
    h ^= np.uint32(salt)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(12)
    h *= np.uint32(0x297A2D39)
    h ^= h >> np.uint32(15)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(2.0 / (1 << 24)) - np.float32(1.0)


def _fade(wavelength_in_cells):
    """Weight of a periodic detail (tree spacing) of a given wavelength in pixel
    cells: 0 below ~1.4 cells, 1 above 4 cells, log-linear in between."""
    return float(np.clip((math.log2(max(wavelength_in_cells, 1e-9)) - 0.5) / 1.5, 0.0, 1.0))


def _octave_weight(a):
    """Weight of a noise octave whose pixel half-width is `a` lattice cells: 1 while
    the pixel is under one lattice cell (wavelength ~2 lattice cells > 2 pixels),
    fading to 0 when it spans two (wavelength ~1 pixel)."""
    return np.clip(2.0 * (1.0 - a), 0.0, 1.0)


def _offset(salt, o):
    return ((salt % 9973) * 0.01 + 37.1 * o, (salt % 7919) * 0.013 + 53.7 * o)


def _kernel(x):
    """Interpolation kernel of the value noise (smoothstep tent on [-1, 1])."""
    t = np.minimum(np.abs(x), 1.0)
    return 1.0 - t * t * (3.0 - 2.0 * t)


def _kernel_int(x):
    """Antiderivative of `_kernel`: 0 at -inf, 1 at +inf."""
    t = np.minimum(np.abs(x), 1.0)
    return 0.5 + np.sign(x) * (t - t ** 3 + 0.5 * t ** 4)


def _taps(u, a):
    """Lattice taps of value noise at lattice coordinates u (octaves x points), each
    averaged over the pixel u +- a (a: one half-width per octave, shape (octaves, 1)).

    Returns the first lattice index (int64, like u), weights and d/du weights
    (taps x octaves x points). The box average of the kernel has a closed form, so
    every octave is exactly box-filtered over the pixel (a -> 0: interpolation)."""
    a = np.maximum(a, 1e-4)
    i0 = np.floor(u - 1.0 - a) + 1.0
    x = (u - i0)[None] - np.arange(int(2.0 + 2.0 * a.max()) + 1)[:, None, None]
    w = (_kernel_int(x + a) - _kernel_int(x - a)) / (2.0 * a)
    dw = (_kernel(x + a) - _kernel(x - a)) / (2.0 * a)
    return i0.astype(np.int64), w, dw


def _octaves(cell, freqs, octaves, gain):
    """Per-octave frequencies, pixel half-widths (lattice cells) and amplitudes of the
    octaves that survive band-limiting; amplitudes are normalised over all octaves,
    so band-limiting only removes detail."""
    o = np.arange(octaves)
    f = np.asarray(freqs, np.float64)[:, None] * _LAC ** o  # (axes, octaves)
    half = 0.5 * f * np.asarray(cell, np.float64)[:, None]
    w = _octave_weight(half.max(0))  # the axis with the coarser pixel decides
    n = int(np.argmin(w > 0)) if (w <= 0).any() else octaves
    amp = gain ** o[:n] / sum(gain ** o) * w[:n]
    return f[:, :n], half[:, :n], amp


def _sum_taps(m, j, w, axis):
    """Sum over taps k of m shifted by j + k along `axis`, weighted by w[k]."""
    if axis == 1:
        return sum(m[:, j + k] * w[k] for k in range(len(w)))
    return sum(m[j + k] * w[k][:, None] for k in range(len(w)))


def _fbm2(X, Y, cx, cy, salt, fx, fy, octaves, gain=0.5, grad_gain=None, grad_axis=0):
    """Band-limited fbm of box-filtered value noise on the grid X (W,) x Y (H,),
    roughly in [-1, 1].

    The pixel grid is separable: each octave hashes only the lattice patch it spans,
    filters it along x, then along y (a few taps per pixel; no BLAS, so no thread
    oversubscription in data-loader workers). With `grad_gain`, also returns the
    derivative along `grad_axis` (0: X, 1: Y) of the fbm whose octave gain is
    `grad_gain` (a smaller gain keeps shading from being dominated by fine octaves)."""
    H, W = len(Y), len(X)
    f, half, amp = _octaves((cx, cy), (fx, fy), octaves, gain)
    n = len(amp)
    grad = grad_gain is not None
    outs = [np.zeros((H, W), np.float32) for _ in range(2 if grad else 1)]
    if n == 0:
        return tuple(outs) if grad else outs[0]
    amps = [amp]
    if grad:
        amps.append(_octaves((cx, cy), (fx, fy), octaves, grad_gain)[2] * f[grad_axis])
    offs = np.array([_offset(salt, o) for o in range(n)]).T  # (2, octaves)
    iu, wu, dwu = _taps(X[None, :] * f[0][:, None] + offs[0][:, None], half[0][:, None])
    iv, wv, dwv = _taps(Y[None, :] * f[1][:, None] + offs[1][:, None], half[1][:, None])
    wu, dwu, wv, dwv = (t.astype(np.float32) for t in (wu, dwu, wv, dwv))
    for o in range(n):
        tu = int(2.0 + 2.0 * half[0, o]) + 1  # taps this octave needs
        tv = int(2.0 + 2.0 * half[1, o]) + 1
        u0, v0 = iu[o].min(), iv[o].min()
        lat = _hash(np.arange(u0, iu[o].max() + tu)[None, :], np.arange(v0, iv[o].max() + tv)[:, None],
                    (salt + o) & 0xFFFFFFFF)
        ju, jv = iu[o] - u0, iv[o] - v0
        # Fold the amplitude into the (short) y weights.
        rows = _sum_taps(lat, ju, wu[:tu, o], axis=1)  # (lattice rows, W)
        outs[0] += _sum_taps(rows, jv, wv[:tv, o] * np.float32(amps[0][o]), axis=0)
        if grad and grad_axis == 0:
            drows = _sum_taps(lat, ju, dwu[:tu, o], axis=1)
            outs[1] += _sum_taps(drows, jv, wv[:tv, o] * np.float32(amps[1][o]), axis=0)
        elif grad:
            outs[1] += _sum_taps(rows, jv, dwv[:tv, o] * np.float32(amps[1][o]), axis=0)
    return tuple(outs) if grad else outs[0]


def _lost_std(cx, cy, fx, fy, octaves, gain=0.5):
    """Std of the part of ``_fbm2`` that band-limiting drops at this cell size.

    A box filter averages that detail away *before* any threshold is applied, so
    thresholds of the noise (cloud edges) widen their ramp by it."""
    o = np.arange(octaves)
    amp = gain ** o / sum(gain ** o)
    half = 0.5 * np.maximum(fx * cx, fy * cy) * _LAC ** o
    w = _octave_weight(half)
    return 0.43 * float(np.sqrt((((1.0 - w) * amp) ** 2).sum()))  # 0.43: std of one octave


def _fbm1(X, c, salt, f, octaves, gain=0.5):
    """Box-filtered, band-limited 1-D fbm and its derivative d/dX (float64)."""
    fs, half, amp = _octaves((c,), (f,), octaves, gain)
    if len(amp) == 0:
        return np.zeros_like(X), np.zeros_like(X)
    offs = np.array([_offset(salt, o)[0] for o in range(len(amp))])[:, None]
    i0, w, dw = _taps(X[None, :] * fs[0][:, None] + offs, half[0][:, None])
    idx = i0[None] + np.arange(len(w))[:, None, None]  # (taps, octaves, points)
    salts = ((salt + np.arange(len(amp))) & 0xFFFFFFFF).astype(np.uint32)[:, None]
    lat = _hash(idx, np.zeros_like(idx), salts).astype(np.float64)
    val = amp @ (lat * w).sum(0)
    der = (amp * fs[0]) @ (lat * dw).sum(0)
    return val, der


def _ramp(f, width):
    """Box-filter coverage of the half-space f > 0 when f changes by `width` across a pixel."""
    return np.clip(0.5 + f / width, 0.0, 1.0).astype(np.float32)


def _over(rgb, alpha, color):
    """In-place 'alpha over': rgb <- rgb + alpha * (color - rgb)."""
    rgb += alpha[..., None] * (color - rgb)


# ----------------------------------------------------------------------------- layers

def _sky(scene, X, Y, cx, cy, style):
    """Sky gradient, stars, sun/moon with glow, clouds. Returns rgb (H, W, 3), labels."""
    H, W = len(Y), len(X)
    top, mid, hor = (np.array(c, np.float32) for c in scene.sky)
    t = np.clip(Y / scene.horizon, 0.0, 1.0).astype(np.float32)[:, None, None]
    lo = np.clip(t / 0.6, 0, 1)  # top -> mid over the upper 60 %, then mid -> horizon
    hi = np.clip((t - 0.6) / 0.4, 0, 1)
    col = top + (mid - top) * lo + (hor - mid) * hi  # (H, 1, 3)
    rgb = np.broadcast_to(col, (H, W, 3)).copy()
    lab = np.zeros((H, W), np.uint8)

    if scene.time == "night":
        rgb += _stars(scene, X, Y, cx, cy)[..., None] * np.array((0.95, 0.97, 1.0), np.float32)
    _orb(scene, rgb, lab, X, Y, cx, cy, style)
    _clouds(scene, rgb, lab, X, Y, cx, cy, style)
    return rgb, lab


def _orb(scene, rgb, lab, X, Y, cx, cy, style):
    """Sun or moon (with maria) and its glow, drawn into rgb and lab in place."""
    H, W = len(Y), len(X)
    ox, oy, rad = scene.orb
    dx = (X - ox).astype(np.float32)
    dy = (Y - oy).astype(np.float32)[:, None]
    d = np.sqrt(dx * dx + dy * dy)
    orb_col = np.array(style["orb"], np.float32)
    glow = style["glow"] * (0.55 * np.exp(-d / (0.6 * rad)) + 0.45 * np.exp(-d / (4.0 * rad)))
    if scene.time == "sunset":
        glow += 0.25 * np.exp(-d / 0.35)
    rgb += glow[..., None] * (orb_col - rgb)  # screen-like brightening toward the orb colour
    # Disc edge: footprint of a pixel across the radial direction.
    width = (np.abs(dx) * cx + np.abs(dy) * cy) / np.maximum(d, 1e-9) + 1e-9
    disc = _ramp(rad - d, np.maximum(width, min(cx, cy)))
    if scene.time == "night":  # moon maria; only on the rows/cols the disc touches
        rows = np.nonzero(np.abs(Y - oy) < rad + cy)[0]
        cols = np.nonzero(np.abs(X - ox) < rad + cx)[0]
        if rows.size and cols.size:
            m = _fbm2(X[cols], Y[rows], cx, cy, _salt(scene.seed, 7), 9.0 / rad * 0.1, 9.0 / rad * 0.1, 5)
            shade = np.ones((H, W), np.float32)
            shade[np.ix_(rows, cols)] = 0.88 + 0.25 * m
            _over(rgb, disc, orb_col * shade[..., None])
        else:
            _over(rgb, disc, orb_col)
    else:
        _over(rgb, disc, orb_col)
    lab[disc > 0.5] = MOON if scene.time == "night" else SUN


def _clouds(scene, rgb, lab, X, Y, cx, cy, style):
    """Clouds, lit from above, drawn into rgb and lab in place."""
    cover, freq = scene.cloud
    if cover > 0.05:
        # Clouds thin out toward the horizon; only rows above it need the noise.
        vert = np.clip((0.95 * scene.horizon - Y) / (0.45 * scene.horizon), 0.0, 1.0)
        rows = np.nonzero(vert > 0)[0]
        if rows.size:
            Yr = Y[rows]
            n, dn_dy = _fbm2(X, Yr, cx, cy, _salt(scene.seed, 1), freq, 3.0 * freq, 10, grad_gain=0.25,
                            grad_axis=1)
            thr = 0.35 - 0.45 * cover
            # Cloud edges are a threshold of the noise: widen the ramp by the detail that
            # band-limiting removed, so that a pixel gets the box-averaged coverage.
            lost = _lost_std(cx, cy, freq, 3.0 * freq, 10)
            alpha = _ramp(n - (thr + 0.1), math.sqrt(0.04 + 2 * math.pi * lost ** 2))
            alpha *= 0.97 * vert[rows, None].astype(np.float32)
            # Lit tops: where density falls off upward (coarse octaves of d/dy).
            lit = np.clip(0.55 + 0.1 * dn_dy / freq + 0.4 * (n - thr), 0.0, 1.0)[..., None]
            c_lit, c_dark = (np.array(c, np.float32) for c in style["cloud"])
            ccol = c_dark + (c_lit - c_dark) * lit
            sub = rgb[rows]
            _over(sub, alpha, ccol)
            rgb[rows] = sub
            lab[rows] = np.where(alpha > 0.5, CLOUD, lab[rows])


def _stars(scene, X, Y, cx, cy):
    """Star field integrated exactly over each pixel box (scale-consistent).

    Each star is a separable bump p(u) p(v), p(u) = (1 - (u/s)^2)^2 on |u| < s; its
    pixel average is a product of closed-form 1-D integrals, scattered into the few
    pixels each star touches."""
    H, W = len(Y), len(X)
    rng = np.random.default_rng(scene.seed + 0x5EED)
    n = 700
    sx = rng.random(n)
    sy = rng.random(n) * scene.horizon
    s = np.exp(rng.uniform(np.log(0.0005), np.log(0.003), n))  # half-width
    inten = rng.uniform(0.25, 0.85, n) * (s / 0.003) ** 0.3
    keep = ((sx + s + cx >= X[0]) & (sx - s - cx <= X[-1])
            & (sy + s + cy >= Y.min()) & (sy - s - cy <= Y.max()))
    rows = np.nonzero(Y < scene.horizon + 0.003 + cy)[0]
    out = np.zeros((H, W), np.float32)
    if not keep.any() or rows.size == 0:
        return out
    sx, sy, s, inten = sx[keep], sy[keep], s[keep], inten[keep]

    def prim(u, s):  # antiderivative of the bump, constant outside its support
        t = np.clip(u / s, -1.0, 1.0)
        t2 = t * t
        return s * t * (1.0 - t2 * (2.0 / 3.0 - 0.2 * t2))

    def window(centres, c, pos):
        """Per star: the points whose pixel [centre +- c/2] meets the star's support,
        as indices into `centres` (padded; padding has zero weight), and the pixel
        averages of the bump profile there."""
        order = np.argsort(centres, kind="stable")
        srt = centres[order]
        lo = np.searchsorted(srt, pos - s - c / 2)
        hi = np.searchsorted(srt, pos + s + c / 2)
        k = lo[:, None] + np.arange(max(int((hi - lo).max()), 1))
        valid = k < hi[:, None]
        k = np.minimum(k, len(srt) - 1)
        u = srt[k] - pos[:, None]
        w = (prim(u + c / 2, s[:, None]) - prim(u - c / 2, s[:, None])) / c
        return order[k], np.where(valid, w, 0.0)

    cols, px = window(X, cx, sx)  # (stars, span_x)
    r, py = window(Y[rows], cy, sy)  # rows may be mirrored (lake) and unsorted
    flat = rows[r][:, :, None] * W + cols[:, None, :]
    vals = (inten[:, None, None] * py[:, :, None] * px[:, None, :])
    out += np.bincount(flat.ravel(), vals.ravel(), minlength=H * W).reshape(H, W).astype(np.float32)
    return out


def _ridges(scene, rgb, lab, X, Y, cx, cy, style):
    """Mountain ridges far to near, with rock texture, snow and atmospheric haze."""
    light = np.array(style["light"], np.float32)
    haze_col = np.array(scene.sky[2], np.float32)
    rock = np.array(scene.rock, np.float32) * light
    snow = np.array(style["snow"], np.float32)
    side = 1.0 if scene.orb[0] < 0.5 else -1.0  # slopes facing the sun are lit
    n = len(scene.ridges)
    lines = []
    for k, (base, amp, freq, haze) in enumerate(scene.ridges):
        v, dv = _fbm1(X, cx, _salt(scene.seed, 20 + k), freq, 12, 0.52)
        lines.append((base - 2.2 * amp * v, -2.2 * amp * dv))
    for k, (base, amp, freq, haze) in enumerate(scene.ridges):
        r, dr = lines[k]
        # Coarse slope of the ridge line (first octaves only) for shading the faces
        # under the crest; the full-detail slope would streak.
        _, slope = _fbm1(X, cx, _salt(scene.seed, 20 + k), freq, 3, 0.52)
        width = cy + np.abs(dr) * cx
        # Only rows between this ridge's top and where nearer ridges hide it entirely.
        lo = (r - width).min()
        hi = min([(lines[j][0] + cy + np.abs(lines[j][1]) * cx).max() for j in range(k + 1, n)] + [np.inf])
        rows = np.nonzero((Y > lo) & (Y < hi))[0]
        if rows.size == 0:
            continue
        Yr = Y[rows]
        below = (Yr[:, None] - r[None, :]).astype(np.float32)  # depth under the crest
        cov = _ramp(below, width[None, :].astype(np.float32))
        # Albedo texture and, from the x-slope of the same field (coarser weighting),
        # relief shading that takes over from the ridge-line slope below the crest.
        tex, dh = _fbm2(X, Yr, cx, cy, _salt(scene.seed, 30 + k), 5.0 * freq, 3.0 * freq, 11,
                        grad_gain=0.3)
        crest = np.exp(-below / 0.04)
        facing = np.tanh(side * (2.0 * amp * slope[None, :] * crest + (1.0 - crest) * dh / (3.0 * freq)))
        shade = (1.0 + 0.25 * tex) * (0.78 + 0.4 * facing) * (1.0 - 0.3 * np.clip(below / 0.3, 0, 1))
        col = rock * shade[..., None]
        snow_f = ((scene.snow_line - Yr)[:, None].astype(np.float32) + 0.07 * tex + 0.02 * facing
                  - 0.02 * np.clip(below / 0.1, 0, 1))
        # Snow edge: soft at full resolution; a coarse pixel also spans cy of the snow
        # line and averages the texture detail that band-limiting dropped.
        lost = 0.07 * _lost_std(cx, cy, 5.0 * freq, 3.0 * freq, 11)
        s_a = _ramp(snow_f, math.sqrt(0.006 ** 2 + cy * cy + 2 * math.pi * lost ** 2))
        col += s_a[..., None] * (snow * (0.7 + 0.3 * shade)[..., None] - col)
        col += np.float32(haze) * (haze_col - col)
        sub = rgb[rows]
        _over(sub, cov, col)
        rgb[rows] = sub
        lab[rows] = np.where(cov > 0.5, np.where(s_a > 0.5, SNOW, MOUNTAIN), lab[rows])


def _trees(X, c, salt, period, height):
    """Conifer silhouette: height above the tree base (>= 0) and its derivative.

    Triangular trees with random heights; when the trees get narrower than ~2 pixels
    their spikes fade toward their mean height (what a box filter would see)."""
    u = X / period + (salt % 1000) * 0.37
    iu = np.floor(u)
    t = u - iu
    hi = height * (0.55 + 0.45 * (_hash(iu.astype(np.int64), np.zeros(len(X), np.int64), salt) * 0.5 + 0.5))
    w = _fade(period / c)
    mean = 0.5 * height * (0.55 + 0.45 * 0.5)
    hi = mean * 2 + w * (hi - mean * 2)  # per-tree height variation fades too
    tri = 1.0 - np.abs(2.0 * t - 1.0)
    h = mean + w * (hi * tri - mean)
    dh = w * hi * 2.0 * np.sign(1.0 - 2.0 * t) / period
    return h, dh, 0.5 + w * (tri - 0.5)


def _forest(scene, rgb, lab, X, Y, cx, cy, style, params, salt, haze):
    top, period, height = params
    bv, bd = _fbm1(X, cx, salt, 3.0, 6)
    h, dh, tri = _trees(X, cx, salt + 1, period, height)
    line = top + 0.012 * bv - h  # tree outline; `top` is where the canopy closes
    dline = 0.012 * bd - dh
    width = cy + np.abs(dline) * cx
    rows = np.nonzero(Y > (line - width).min())[0]
    if rows.size == 0:
        return
    Yr = Y[rows]
    cov = _ramp((Yr[:, None] - line[None, :]).astype(np.float32), width[None, :].astype(np.float32))
    # Crowns: blobs about a tree wide, brighter near the tree line (more light).
    tex = _fbm2(X, Yr, cx, cy, salt + 2, 0.8 / period, 0.6 / period, 6)
    near_top = np.exp(-np.maximum(Yr[:, None] - line[None, :], 0) / (2 * height)).astype(np.float32)
    light = np.array(style["light"], np.float32)
    shade = (0.7 + 0.4 * tri.astype(np.float32)[None, :] * near_top + 0.5 * tex)
    col = np.array((0.07, 0.17, 0.09), np.float32) * light * shade[..., None]
    col += np.float32(haze) * (np.array(scene.sky[2], np.float32) - col)
    sub = rgb[rows]
    _over(sub, cov, col)
    rgb[rows] = sub
    lab[rows] = np.where(cov > 0.5, FOREST, lab[rows])


def _fog(scene, rgb, lab, X, Y, cx, cy, style):
    density, centre, half = scene.fog
    prof = np.exp(-(((Y - centre) / half) ** 2))
    rows = np.nonzero(prof > 1e-3)[0]
    if rows.size == 0:
        return
    n = _fbm2(X, Y[rows], cx, cy, _salt(scene.seed, 50), 3.0, 14.0, 7)
    alpha = np.clip(density * prof[rows, None] * (0.85 + 0.6 * n), 0.0, 0.95).astype(np.float32)
    col = 0.7 * np.array(scene.sky[2], np.float32) + 0.3 * np.array(style["light"], np.float32)
    sub = rgb[rows]
    _over(sub, alpha, col)
    rgb[rows] = sub
    lab[rows] = np.where(alpha > 0.5, FOG, lab[rows])


def _grass(scene, rgb, lab, X, Y, cx, cy, style):
    v, dv = _fbm1(X, cx, _salt(scene.seed, 60), 2.0, 8)
    line = scene.grass + 0.03 * v
    width = cy + np.abs(0.03 * dv) * cx
    rows = np.nonzero(Y > (line - width).min())[0]
    if rows.size == 0:
        return
    Yr = Y[rows]
    cov = _ramp((Yr[:, None] - line[None, :]).astype(np.float32), width[None, :].astype(np.float32))
    patches = _fbm2(X, Yr, cx, cy, _salt(scene.seed, 61), 5.0, 10.0, 6)
    blades = _fbm2(X, Yr, cx, cy, _salt(scene.seed, 62), 60.0, 6.0, 6)
    light = np.array(style["light"], np.float32)
    depth = np.clip((Yr - scene.grass) / 0.1, 0, 1).astype(np.float32)[:, None]
    shade = (1.0 + 0.35 * patches + 0.3 * blades) * (1.0 - 0.3 * depth)
    base = np.array((0.32, 0.50, 0.16), np.float32) * light
    col = base * shade[..., None]
    sub = rgb[rows]
    _over(sub, cov, col)
    rgb[rows] = sub
    lab[rows] = np.where(cov > 0.5, GRASS, lab[rows])


# ----------------------------------------------------------------------------- render

def _check_box(box):
    try:
        l, t, r, b = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"box must be 4 numbers (left, top, right, bottom), got box={box!r}") from None
    if not (0.0 <= l < r <= 1.0 and 0.0 <= t < b <= 1.0):
        raise ValueError(
            f"box must satisfy 0 <= left < right <= 1 and 0 <= top < bottom <= 1, got box={box!r}")
    return l, t, r, b


def _check_size(size):
    try:
        ok = len(size) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in size)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"size must be two positive integers (H, W), got size={size!r}")
    return int(size[0]), int(size[1])


def render_scene(scene: Scene, box=(0.0, 0.0, 1.0, 1.0), size=(256, 256)):
    """Render ``scene`` over ``box`` = (left, top, right, bottom) in canvas fractions.

    Pixel (i, j) is the point x = left + (right-left)(j+0.5)/W, y = top +
    (bottom-top)(i+0.5)/H, antialiased for a cell of ((right-left)/W, (bottom-top)/H).
    Returns ``rgb`` float32 (H, W, 3) in [0, 1] and ``labels`` uint8 (H, W) into LABELS.
    Cost grows with H * W only (zooming in adds at most a few noise octaves); the
    rest of the canvas is never evaluated."""
    l, t, r, b = _check_box(box)
    H, W = _check_size(size)
    cx, cy = (r - l) / W, (b - t) / H
    X = l + (r - l) * (np.arange(W) + 0.5) / W
    Y = t + (b - t) * (np.arange(H) + 0.5) / H
    style = _TIME_STYLE[scene.time]

    # Rows under the water line look at the mirrored scene; the vertical ripple offset
    # grows with distance from the shore so the mapping stays continuous at the line.
    Yb = Y
    if scene.lake is not None:
        depth = Y - scene.lake
        rip, _ = _fbm1(Y, cy, _salt(scene.seed, 70), 45.0, 4, 0.45)
        Yb = np.where(depth > 0, scene.lake - depth * (1.0 - 0.05 * rip), Y)

    rgb, lab = _sky(scene, X, Yb, cx, cy, style)
    _ridges(scene, rgb, lab, X, Yb, cx, cy, style)
    if scene.forest is not None:
        _forest(scene, rgb, lab, X, Yb, cx, cy, style, scene.forest, _salt(scene.seed, 40), 0.25)
    if scene.fog is not None:
        _fog(scene, rgb, lab, X, Yb, cx, cy, style)

    if scene.lake is not None:
        cov = _ramp(depth, cy)
        rows = np.nonzero(cov > 0)[0]
        if rows.size:
            d = depth[rows].astype(np.float32)[:, None]
            streak = _fbm2(X, Y[rows], cx, cy, _salt(scene.seed, 71), 4.0, 90.0, 6)
            fres = 0.5 + 0.4 * np.exp(-np.maximum(d, 0) / 0.05)
            tint = np.array((0.78, 0.88, 0.95), np.float32)
            deep = np.array(scene.sky[2], np.float32) * np.array((0.25, 0.35, 0.4), np.float32)
            refl = rgb[rows]
            water = (refl * tint * (fres * (1.0 + 0.25 * streak))[..., None]
                     + deep * (1.0 - fres)[..., None])
            _over(refl, np.broadcast_to(cov[rows, None], (rows.size, W)), water)
            rgb[rows] = refl
            lab[rows] = np.where(cov[rows, None] > 0.5, WATER, lab[rows])

    if scene.near_forest is not None:
        _forest(scene, rgb, lab, X, Y, cx, cy, style, scene.near_forest, _salt(scene.seed, 45), 0.0)
    _grass(scene, rgb, lab, X, Y, cx, cy, style)
    np.clip(rgb, 0.0, 1.0, out=rgb)
    return rgb, lab


# ----------------------------------------------------------------------------- captions

_SKY_PHRASE = {"day": "a clear blue sky", "sunset": "a sunset sky", "night": "a starry night sky"}
_CLOUDY_PHRASE = {"day": "a cloudy sky", "sunset": "a cloudy sunset sky", "night": "a cloudy night sky"}
_GROUND_PHRASE = {"mountain": "rocky mountains", "snow": "snowy peaks", "forest": "a forest",
                  "grass": "a grassy meadow", "water": "a lake", "fog": "fog"}


def label_captions() -> dict:
    """Canonical short prompt per label (e.g. for a zero-shot classifier)."""
    return {
        "sky": "a clear sky", "cloud": "clouds", "sun": "the sun", "moon": "the moon",
        "mountain": "rocky mountains", "snow": "snowy mountains", "forest": "a forest",
        "grass": "a grassy meadow", "water": "a lake", "fog": "fog",
    }


def _join(parts):
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(scene: Scene, box=(0.0, 0.0, 1.0, 1.0), size=(64, 64)) -> str:
    """Caption of a crop from its label fractions and the scene's time of day.

    Ground layers covering >= 8 % are named (largest first, at most three); the sky
    is mentioned when it covers >= 10 %, e.g. "snowy peaks under a sunset sky",
    "a lake at night", "clouds in a sunset sky"."""
    _, lab = render_scene(scene, box, size)
    frac = np.bincount(lab.ravel(), minlength=len(LABELS)) / lab.size
    order = np.argsort(-frac, kind="stable")
    ground = [LABELS[i] for i in order if LABELS[i] in _GROUND_PHRASE and frac[i] >= 0.08][:3]
    if "mountain" in ground and frac[SNOW] >= 0.02:  # one phrase for snow-capped rock
        ground = [g for g in ground if g != "snow"]
        phrases = ["snowy mountains" if g == "mountain" else _GROUND_PHRASE[g] for g in ground]
    else:
        phrases = [_GROUND_PHRASE[g] for g in ground]
    sky = frac[SKY] + frac[CLOUD] + frac[SUN] + frac[MOON]
    cloudy = frac[CLOUD] >= 0.3 * sky
    sky_text = (_CLOUDY_PHRASE if cloudy else _SKY_PHRASE)[scene.time]
    orb = "the moon" if scene.time == "night" else "the sun"
    if frac[SUN] + frac[MOON] >= 0.02:
        sky_text += " with " + orb
    if not phrases:
        if frac[SUN] + frac[MOON] >= 0.3:
            return orb + " in " + _SKY_PHRASE[scene.time]
        if frac[CLOUD] >= 0.5:
            return "clouds in " + _SKY_PHRASE[scene.time]
        return sky_text
    text = _join(phrases)
    if sky >= 0.1:
        return text + " under " + sky_text
    return text + {"day": "", "sunset": " at sunset", "night": " at night"}[scene.time]


# ----------------------------------------------------------------------------- dataset

class LandscapeDataset:
    """Fixed set of scenes with per-scene maximum resolution (FFHQ-6K-Mix style).

    With ``mixed=True`` a random ``high_res_fraction`` of the scenes is available up to
    ``high_res`` and the rest only up to ``low_res``; ``get`` refuses to render finer
    than that. Train scenes use seeds ``seed + i``; test scenes ``TEST_SEED_OFFSET +
    seed + i`` (disjoint as long as seed + num_scenes <= TEST_SEED_OFFSET)."""

    def __init__(self, num_scenes, seed=0, split="train", high_res_fraction=0.1,
                 low_res=256, high_res=1024, mixed=True):
        if int(num_scenes) <= 0:
            raise ValueError(f"num_scenes must be positive, got num_scenes={num_scenes!r}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got split={split!r}")
        if not 0.0 <= high_res_fraction <= 1.0:
            raise ValueError(f"high_res_fraction must be in [0, 1], got high_res_fraction={high_res_fraction!r}")
        if not 0 < low_res <= high_res:
            raise ValueError(f"need 0 < low_res <= high_res, got low_res={low_res!r}, high_res={high_res!r}")
        if seed < 0 or seed + num_scenes > TEST_SEED_OFFSET:
            raise ValueError(f"seed + num_scenes must lie in [0, {TEST_SEED_OFFSET}], got seed={seed!r}")
        self.num_scenes = int(num_scenes)
        self.seed = int(seed)
        self.split = split
        self.low_res, self.high_res = int(low_res), int(high_res)
        self._first_seed = self.seed + (TEST_SEED_OFFSET if split == "test" else 0)
        self._high = np.ones(self.num_scenes, bool)
        if mixed:
            self._high[:] = False
            n_high = int(round(high_res_fraction * self.num_scenes))
            pick = np.random.default_rng([self.seed, 1 if split == "test" else 0]).permutation(self.num_scenes)
            self._high[pick[:n_high]] = True

    def __len__(self):
        return self.num_scenes

    def _index(self, index):
        if not 0 <= index < self.num_scenes:
            raise IndexError(f"index must be in [0, {self.num_scenes}), got index={index!r}")
        return int(index)

    def scene(self, index) -> Scene:
        return sample_scene(self._first_seed + self._index(index))

    def max_resolution(self, index) -> int:
        """Finest full-canvas resolution at which scene ``index`` is available."""
        return self.high_res if self._high[self._index(index)] else self.low_res

    def get(self, index, box=(0.0, 0.0, 1.0, 1.0), size=None):
        """Render scene ``index``; ``size`` defaults to the box at the scene's max resolution.

        Raises ValueError if the requested pixel cell is finer than 1 / max_resolution."""
        res = self.max_resolution(index)
        l, t, r, b = _check_box(box)
        if size is None:
            size = (max(1, math.floor((b - t) * res + 1e-9)), max(1, math.floor((r - l) * res + 1e-9)))
        H, W = _check_size(size)
        if (r - l) / W < (1.0 - 1e-9) / res or (b - t) / H < (1.0 - 1e-9) / res:
            raise ValueError(
                f"size={size!r} over box={box!r} exceeds scene {index}'s max resolution {res}")
        return render_scene(self.scene(index), (l, t, r, b), (H, W))


def scene_tensor(seed: int, size, box=(0.0, 0.0, 1.0, 1.0)):
    """Scene ``seed`` rendered over ``box`` as a ``1 x 3 x H x W`` torch tensor in [-1, 1] (``size``: S or
    (H, W)), the convention of the models and solvers."""
    import torch

    size = (size, size) if isinstance(size, int) else tuple(size)
    rgb, _ = render_scene(sample_scene(seed), box, size)
    return torch.from_numpy(rgb).permute(2, 0, 1)[None] * 2 - 1
