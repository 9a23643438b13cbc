"""The patch-code autoencoder: a fixed linear (PCA) code of P x P pixel patches, and a learned field on top.

The encoder has no parameters: each P x P patch of the image (3 P^2 numbers) is projected on the top K principal
components of the training patches and divided by each component's standard deviation, so the latent is
``K x H/P x W/P`` with unit variance per channel ("whitened"; ``fit_patch_code(whitening=...)`` divides by a
power of it instead). Measured by ``recipes/eval_latent_capacity.py``, such a code reconstructs far better than
the learned encoders we could train (32 components of 8x8 patches of a 128-px image: 35.9 dB at 256 after
bicubic upsampling).

With ``overlap`` O > 0 the code is lapped: each cell's patch reaches O pixels into its neighbours, tapered by a
sine window whose squares sum to one where patches overlap (Princen-Bradley), and the decoder adds the windowed
patches back. A latent error then fades out across the cell border instead of stopping at it: a block code
draws each cell's error as its own block, which is how sampled latents looked at 1024 (model card).

The decoder inverts the code linearly (an image at the input size) and adds ``ch`` learned feature channels
computed from that image; the field is ``[image, features]``. A renderer with ``rgb_skip`` then draws the
image, sampled at each pixel, plus a learned correction, so an untrained model (zeroed ``conv_out``)
reconstructs exactly like the linear code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from diffusers.models.resnet import ResnetBlock2D
from torch import nn
from tqdm.auto import tqdm

from .. import checks

KIND = "patch_code"


@dataclass
class PatchCodeConfig:
    """Options of the patch-code encoder and decoder (the same for both; the encoder ignores ``ch`` and
    ``num_res_blocks``). Saved with ``"kind": "patch_code"``, which is how a config file tells it apart."""

    kind: str = KIND
    patch: int = 8  # P: pixels per side of one patch, the downsampling factor
    z_channels: int = 32  # K: principal components kept, 1 .. 3 (P + 2 O)^2
    ch: int = 32  # learned feature channels of the field (beside its 3 image channels)
    num_res_blocks: int = 1  # residual blocks of the learned feature net
    resolution: int = 128  # encoder input size (informational, as the conv stack's)
    overlap: int = 0  # O: pixels each patch reaches into its neighbours, 0 .. P/2 (0: a block code)
    refined: bool = False  # analysis and synthesis trained apart (refine_patch_code), not the PCA's transposes

    def __post_init__(self):
        if self.kind != KIND:
            raise ValueError(f"kind must be {KIND!r} for a PatchCodeConfig, got {checks.shown(self.kind)}")
        self.patch = checks.integer(self.patch, "patch", 1)
        self.overlap = checks.integer(self.overlap, "overlap", 0, self.patch // 2)
        side = window_size(self.patch, self.overlap)
        self.z_channels = checks.integer(self.z_channels, "z_channels", 1)
        if self.z_channels > 3 * side**2:
            raise ValueError(f"z_channels must be between 1 and 3 * (patch + 2 * overlap)^2 = {3 * side**2} (a "
                             f"windowed {side} x {side} patch has that many numbers), got {self.z_channels}")
        self.ch = checks.integer(self.ch, "ch", 32)
        if self.ch % 32:
            raise ValueError(f"ch must be a multiple of 32 for GroupNorm(32) (got {self.ch})")
        self.num_res_blocks = checks.integer(self.num_res_blocks, "num_res_blocks", 0)
        self.resolution = checks.integer(self.resolution, "resolution", 1)
        if not isinstance(self.refined, bool):
            raise ValueError(f"refined must be true or false, got {checks.shown(self.refined)}")
        if self.resolution % self.patch:
            raise ValueError(f"resolution must be divisible by patch={self.patch}, got {self.resolution}")

    @property
    def downsampling(self) -> int:
        return self.patch

    @property
    def in_channels(self) -> int:
        return 3

    @property
    def field_channels(self) -> int:
        """The decoder's field: the linear decode (3 channels) and the learned features."""
        return 3 + self.ch

    def to_dict(self) -> dict:
        return asdict(self)


class _LinearCode(nn.Module):
    """The code's buffers. Encoder and decoder each hold a copy, so either one stands alone.

    ``mean`` [3S^2], ``basis`` [K, 3S^2] (the analysis: orthonormal rows as fitted), ``scale`` [K] (each
    component's standard deviation), S = P + 2 O the windowed patch's side; a refined code adds ``synthesis``
    [K, 3S^2] (the decoder's rows; otherwise ``scale * basis``). Patch vectors are laid out as ``F.unfold``
    gives them (channel, row, column).
    """

    def __init__(self, config: PatchCodeConfig):
        super().__init__()
        self.config = config
        values, k = 3 * window_size(config.patch, config.overlap)**2, config.z_channels
        # Before fitting, still a valid code: the first K values of each patch, unscaled.
        self.register_buffer("mean", torch.zeros(values))
        self.register_buffer("basis", torch.eye(k, values))
        self.register_buffer("scale", torch.ones(k))
        if config.refined:
            self.register_buffer("synthesis", torch.eye(k, values))

    @property
    def synthesis_rows(self) -> torch.Tensor:
        return self.synthesis if self.config.refined else self.scale[:, None] * self.basis

    def set_code(self, code: dict) -> None:
        """Load a fitted or refined code (:func:`fit_patch_code`'s or :func:`refine_patch_code`'s dict)."""
        names = ("mean", "basis", "scale") + (("synthesis",) if self.config.refined else ())
        if ("synthesis" in code) != self.config.refined:
            raise ValueError("a refined code (one with synthesis rows) needs a config with refined=True, and "
                             f"refined=True needs one; this config has refined={self.config.refined}")
        values = {name: torch.as_tensor(code[name]).detach() for name in names}
        for name, value in values.items():  # all checked before any is copied: no half-loaded code
            if tuple(value.shape) != tuple(getattr(self, name).shape):
                raise ValueError(f"code {name} has shape {tuple(value.shape)}, this {type(self).__name__} needs "
                                 f"{tuple(getattr(self, name).shape)} (patch={self.config.patch}, "
                                 f"z_channels={self.config.z_channels})")
        for name, value in values.items():
            getattr(self, name).copy_(value)


def window_size(patch: int, overlap: int) -> int:
    return patch + 2 * overlap


def patch_window(patch: int, overlap: int) -> torch.Tensor:
    """[3S^2]: a 1-D window (ones, with sine tapers of 2 O pixels at both ends, so that the squares of
    neighbouring windows sum to one) as an outer product per channel, laid out as ``F.unfold`` gives patches."""
    taper = torch.sin(torch.pi / 2 * (torch.arange(2 * overlap, dtype=torch.float64) + 0.5) / max(2 * overlap, 1))
    line = torch.cat([taper, torch.ones(patch - 2 * overlap, dtype=torch.float64), taper.flip(0)])
    return torch.outer(line, line).flatten().repeat(3)


def windowed_patches(images: torch.Tensor, patch: int, overlap: int) -> torch.Tensor:
    """``B x 3 x H x W`` -> ``B x (H/P * W/P) x 3S^2``: each cell's patch with its overlap, windowed; the
    image is mirrored at its border for the outer cells' overlap."""
    if overlap:
        images = F.pad(images, (overlap,) * 4, mode="reflect")
    cols = F.unfold(images, window_size(patch, overlap), stride=patch).transpose(1, 2)
    return cols * patch_window(patch, overlap).to(cols)


def encode_patches(images: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor, scale: torch.Tensor, patch: int,
                   overlap: int) -> torch.Tensor:
    """``B x 3 x H x W`` -> ``B x K x H/P x W/P``: each windowed patch, centred, on the analysis rows, scaled."""
    b, _, h, w = images.shape
    z = (windowed_patches(images, patch, overlap) - mean) @ basis.T / scale
    return z.transpose(1, 2).reshape(b, -1, h // patch, w // patch)


def decode_patches(z: torch.Tensor, mean: torch.Tensor, synthesis: torch.Tensor, patch: int, overlap: int
                   ) -> torch.Tensor:
    """``B x K x h x w`` -> ``B x 3 x hP x wP``: each cell's patch (``z @ synthesis + mean``) windowed and added
    back, divided by the sum of the squared windows, which is one except in the outermost O pixels, where only
    one cell reaches."""
    _, _, h, w = z.shape
    s, size = window_size(patch, overlap), (h * patch + 2 * overlap, w * patch + 2 * overlap)
    window = patch_window(patch, overlap).to(synthesis)
    cols = (z.flatten(2).transpose(1, 2) @ synthesis + mean) * window
    image = F.fold(cols.transpose(1, 2), size, s, stride=patch)
    if overlap:
        weights = (window[: s * s] ** 2)[None, :, None].expand(1, s * s, h * w)
        image = image / F.fold(weights, size, s, stride=patch)
        image = image[..., overlap:-overlap, overlap:-overlap]
    return image


class PatchEncoder(_LinearCode):
    """Image ``B x 3 x H x W`` (H, W multiples of P) -> whitened code ``B x K x H/P x W/P``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.config.patch
        h, w = x.shape[-2:]
        if h % p or w % p:
            raise ValueError(f"image size {(h, w)} is not divisible by patch={p}")
        return encode_patches(x, self.mean, self.basis, self.scale, p, self.config.overlap)


class PatchDecoder(_LinearCode):
    """Code ``B x K x h x w`` -> field ``B x (3 + ch) x hP x wP``: the linear decode and learned features."""

    def __init__(self, config: PatchCodeConfig):
        super().__init__(config)
        self.conv_in = nn.Conv2d(3, config.ch, kernel_size=3, padding=1)
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels=config.ch, out_channels=config.ch, temb_channels=None, eps=1e-6)
            for _ in range(config.num_res_blocks)
        )

    @property
    def out_channels(self) -> int:
        return self.config.field_channels

    def linear_decode(self, z: torch.Tensor) -> torch.Tensor:
        """The code's own reconstruction: the image at the input size (exact with all 3 S^2 components).

        See :func:`decode_patches`."""
        return decode_patches(z, self.mean, self.synthesis_rows, self.config.patch, self.config.overlap)

    def forward(self, z: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
        """``checkpoint``: gradient checkpointing of the residual blocks (as :class:`FieldDecoder`)."""
        image = self.linear_decode(z)
        h = self.conv_in(image)
        for block in self.resnets:
            if checkpoint and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(block, h, None, use_reentrant=False)
            else:
                h = block(h, None)
        return torch.cat([image, h], 1)


def fit_patch_code(images: torch.Tensor, patch: int, channels: int, whitening: float = 1.0, overlap: int = 0
                   ) -> dict[str, torch.Tensor]:
    """The top ``channels`` principal components of the ``patch`` x ``patch`` patches of ``images``
    (``N x 3 x H x W``, H and W multiples of ``patch``), each reaching ``overlap`` pixels into its neighbours
    and windowed as the encoder windows them: ``{"mean", "basis", "scale"}`` in float32.

    An SVD of the centred patches in float64 (as ``recipes/eval_latent_capacity.py``); ``scale`` is each
    component's standard deviation over the patches (singular value / sqrt(n - 1)) to the power ``whitening``:
    1 whitens (unit variance per channel), 0 keeps the data's spectrum (an orthonormal projection, in which a
    latent error costs what it costs in pixels), values between compromise.
    """
    patch = checks.integer(patch, "patch", 1)
    overlap = checks.integer(overlap, "overlap", 0, patch // 2)
    channels = checks.integer(channels, "channels", 1, 3 * window_size(patch, overlap)**2)
    whitening = checks.number(whitening, "whitening", 0.0, 1.0)
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be an N x 3 x H x W tensor, got {shape}")
    if images.shape[2] % patch or images.shape[3] % patch:
        raise ValueError(f"images of size {tuple(images.shape[2:])} are not divisible by patch={patch}")
    data = windowed_patches(images.double(), patch, overlap).flatten(0, 1)  # all patches x 3S^2
    n = data.shape[0]
    if n <= channels:
        raise ValueError(f"{n} patches cannot fit {channels} components: give more images")
    mean = data.mean(0)
    _, singular, basis = torch.linalg.svd(data - mean, full_matrices=False)
    # A component the data never varies along (e.g. a flat training set) would divide the code by zero.
    scale = (singular[:channels] / math.sqrt(n - 1)).clamp_min(1e-6) ** whitening
    return {"mean": mean.float(), "basis": basis[:channels].float(), "scale": scale.float()}


def refine_patch_code(code: dict, images: torch.Tensor, patch: int, overlap: int = 0, steps: int = 4000,
                      batch_size: int = 32, lr: float = 1e-4, seed: int = 0, progress: bool = True
                      ) -> dict[str, torch.Tensor]:
    """Train a fitted code's analysis rows (``basis``) and its synthesis rows apart, from the PCA's, for the
    reconstruction's squared error on ``images`` (``N x 3 x H x W``, trained on their device): ``fit_patch_code``'s
    dict plus ``synthesis``, for ``refined=True``, on the CPU.

    The PCA is the best code only when each patch stands alone. A lapped code adds overlapping windowed patches
    back, and the PCA keeps detail better at a cell's centre than at its border, where two tapered windows share
    the pixels: a faint grid, and a higher error than a decoder fitted to the overlap-add.
    """
    steps = checks.integer(steps, "steps", 1)
    generator, device = torch.Generator().manual_seed(seed), images.device  # the CPU draws: the same on any device
    mean, scale, basis = (code[name].detach().to(device) for name in ("mean", "scale", "basis"))
    synthesis = (scale[:, None] * basis).requires_grad_(True)
    basis = basis.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([basis, synthesis], lr=lr)
    for _ in tqdm(range(steps), desc="refining the patch code", disable=not progress):
        x = images[torch.randint(0, len(images), (batch_size,), generator=generator).to(device)]
        z = encode_patches(x, mean, basis, scale, patch, overlap)
        loss = F.mse_loss(decode_patches(z, mean, synthesis, patch, overlap), x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {name: value.detach().cpu() for name, value in
            {"mean": mean, "basis": basis, "scale": scale, "synthesis": synthesis}.items()}


def set_patch_code(model, code: dict) -> None:
    """Load a fitted or refined code into a patch-code model's encoder and decoder."""
    if getattr(model.config.encoder, "kind", None) != KIND:
        raise ValueError("set_patch_code needs a model whose autoencoder is a patch code")
    model.encoder.set_code(code)
    model.decoder.set_code(code)
