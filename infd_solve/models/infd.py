"""The INFD model: autoencoder to a feature field, CLIF renderer, and a latent diffusion denoiser."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn

from .. import rendering
from ..io import atomic_directory
from .autoencoder import ConvStackConfig, FieldDecoder, FieldEncoder, Quantizer
from .patch_code import KIND as PATCH_CODE, PatchCodeConfig, PatchDecoder, PatchEncoder
from .renderer import CLIFRenderer, RendererConfig

FORMAT_NAME = "infd-solve"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# What a denoiser may predict (diffusers' names); INFDModel.denoise turns either into the noise.
PREDICTION_TYPES = ("epsilon", "v_prediction")

AutoencoderConfig = ConvStackConfig | PatchCodeConfig


def autoencoder_config(value: dict, name: str) -> AutoencoderConfig:
    """An encoder or decoder config from its dict: ``"kind": "patch_code"`` is a patch code; no kind (every
    conv-stack config ever saved) is a conv stack."""
    value = dict(value)
    kind = value.pop("kind", ConvStackConfig.kind)
    if kind == PATCH_CODE:
        return PatchCodeConfig(**value)
    if kind != ConvStackConfig.kind:
        raise ValueError(f"{name}.kind must be {PATCH_CODE!r} or absent (a conv stack), got {kind!r}")
    return ConvStackConfig(**value)


def _autoencoder_classes(config: INFDConfig) -> tuple[type[nn.Module], type[nn.Module]]:
    """The encoder and decoder classes of ``config``'s kind."""
    if config.encoder.kind == PATCH_CODE:
        return PatchEncoder, PatchDecoder
    return FieldEncoder, FieldDecoder


@dataclass
class INFDConfig:
    """Everything needed to build an :class:`INFDModel` (no behaviour hidden in registries)."""

    z_shape: tuple[int, int, int] = (3, 64, 64)
    encoder: AutoencoderConfig = field(default_factory=ConvStackConfig)  # or a dict (autoencoder_config)
    decoder: AutoencoderConfig = field(default_factory=ConvStackConfig)
    n_embed: int | None = 8192  # codebook size; None: no quantizer
    renderer: RendererConfig = field(default_factory=RendererConfig)
    unet: dict | None = None  # diffusers UNet2DModel config; None: autoencoder only
    scheduler: dict = field(
        default_factory=lambda: {"num_train_timesteps": 1000, "beta_schedule": "linear",
                                 "beta_start": 0.0015, "beta_end": 0.0195}
    )  # diffusers DDPMScheduler config
    ddim_eta: float = 1.0
    # The denoiser models (z - latent_shift) * latent_scale (diffusers' "scaling_factor"; per channel when
    # lists): unit-variance latents suit the noise schedule. Official checkpoints use 1 and no shift.
    latent_scale: float | list[float] = 1.0
    latent_shift: list[float] | None = None

    def __post_init__(self):
        from .. import checks

        if not isinstance(self.z_shape, (list, tuple)) or len(self.z_shape) != 3:
            raise ValueError(f"z_shape must be (channels, height, width), got {checks.shown(self.z_shape)}")
        self.z_shape = tuple(checks.integer(v, "z_shape", 1) for v in self.z_shape)
        self.ddim_eta = checks.number(self.ddim_eta, "ddim_eta", 0.0, 1.0)
        self.latent_scale = self._per_channel(self.latent_scale, "latent_scale", low=0.0)
        if self.latent_shift is not None:
            self.latent_shift = self._per_channel(list(self.latent_shift), "latent_shift", low=None)
        for name in ("encoder", "decoder"):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, autoencoder_config(getattr(self, name), name))
        if isinstance(self.renderer, dict):
            self.renderer = RendererConfig(**self.renderer)
        prediction = self.scheduler.get("prediction_type", "epsilon")
        if prediction not in PREDICTION_TYPES:
            raise ValueError(f"scheduler prediction_type must be one of {PREDICTION_TYPES}, got "
                             f"{checks.shown(prediction)}")
        if self.encoder.kind != self.decoder.kind:
            raise ValueError(f"encoder and decoder must be of one kind, got {self.encoder.kind!r} and "
                             f"{self.decoder.kind!r}")
        if self.encoder.kind == PATCH_CODE and self.encoder.patch != self.decoder.patch:
            # both hold the same code
            raise ValueError(f"encoder.patch={self.encoder.patch} and decoder.patch={self.decoder.patch} differ")
        if self.encoder.z_channels != self.z_shape[0] or self.decoder.z_channels != self.z_shape[0]:
            raise ValueError(f"z_shape {self.z_shape} does not match the autoencoder's z_channels")
        if self.renderer.feature_channels != self.decoder.field_channels:
            raise ValueError(
                f"renderer.feature_channels={self.renderer.feature_channels} but the decoder's field has "
                f"{self.decoder.field_channels} channels"
            )

    def _per_channel(self, value, name: str, low: float | None) -> float | list[float]:
        """A number (> ``low``), or a list of one per latent channel."""
        from .. import checks

        if not isinstance(value, (list, tuple)):
            return checks.number(value, name, low, strict=low is not None)
        if len(value) != self.z_shape[0]:
            raise ValueError(f"{name} needs one value per latent channel ({self.z_shape[0]}), got {len(value)}")
        return [checks.number(v, name, low, strict=low is not None) for v in value]

    @property
    def input_size(self) -> tuple[int, int]:
        """Image size the encoder expects (latent size times the downsampling factor)."""
        return self.z_shape[1] * self.encoder.downsampling, self.z_shape[2] * self.encoder.downsampling

    def to_dict(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "z_shape": list(self.z_shape),
            "encoder": self.encoder.to_dict(),
            "decoder": self.decoder.to_dict(),
            "n_embed": self.n_embed,
            "renderer": self.renderer.to_dict(),
            "unet": self.unet,
            "scheduler": self.scheduler,
            "ddim_eta": self.ddim_eta,
            "latent_scale": self.latent_scale,
        } | ({} if self.latent_shift is None else {"latent_shift": self.latent_shift})

    @classmethod
    def from_dict(cls, d: dict) -> "INFDConfig":
        d = {k: v for k, v in d.items() if k not in ("format", "version")}
        return cls(**d)


def _check_finite(name: str, x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"{name} contains {bad} NaN/inf values")


def _check_channels(name: str, x: torch.Tensor, channels: int, spatial: tuple[int, int] | None = None) -> None:
    if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] != channels:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{name} must be a B x {channels} x H x W tensor, got shape {shape}")
    if spatial is not None and tuple(x.shape[2:]) != tuple(spatial):
        raise ValueError(f"{name} must have spatial size {tuple(spatial)}, got {tuple(x.shape[2:])}")


class INFDModel(nn.Module):
    """Image Neural Field Diffusion model.

    ``encode``: image -> latent ``z``; ``decode``: latent -> feature field ``phi``; ``render``: field -> RGB
    on any box at any size; ``denoise``/``sample``: latent diffusion. Images are in [-1, 1].
    """

    def __init__(self, config: INFDConfig):
        super().__init__()
        self.config = config
        encoder, decoder = _autoencoder_classes(config)
        # built in this order, as always: a seeded model gets the same weights as before, and optimizer states
        # saved by older runs list the parameters in this order
        self.encoder = encoder(config.encoder)
        self.quantizer = Quantizer(config.n_embed, config.z_shape[0]) if config.n_embed else None
        self.decoder = decoder(config.decoder)
        self.renderer = CLIFRenderer(config.renderer)
        self.unet = UNet2DModel(**config.unet) if config.unet is not None else None
        self.scheduler = DDPMScheduler(**config.scheduler)

    # ----------------------------------------------------------------------------------------- autoencoder
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``B x 3 x H x W`` in [-1, 1] -> pre-quantization latents (resized to the input size)."""
        _check_channels("x", x, self.config.encoder.in_channels)
        _check_finite("x", x)
        size = self.config.input_size
        if tuple(x.shape[2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)
        return self.encoder(x)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        return self.quantizer(z)[0] if self.quantizer is not None else z

    def decode(self, z: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
        """Latents -> feature field ``phi`` (quantized first, as the official ``decode_z``). ``checkpoint``:
        gradient checkpointing of the decoder's blocks (see :class:`FieldDecoder`, :class:`PatchDecoder`)."""
        _check_channels("z", z, self.config.z_shape[0])
        _check_finite("z", z)
        return self.decode_unchecked(z, checkpoint)

    def decode_unchecked(self, z: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
        """:meth:`decode` without checking its input: for samplers' inner loops, whose latents are checked
        once up front (checking every step would wait for the device at every step)."""
        return self.decoder(self.quantize(z), checkpoint)

    # ------------------------------------------------------------------------------------------- rendering
    def _check_field(self, phi: torch.Tensor) -> None:
        _check_channels("phi", phi, self.config.renderer.feature_channels)
        _check_finite("phi", phi)

    def render(self, phi: torch.Tensor, size, box=rendering.FULL_CANVAS) -> torch.Tensor:
        """RGB ``B x 3 x h x w`` of ``box`` (left, top, right, bottom in canvas fractions) at ``size``."""
        self._check_field(phi)
        return rendering.render_box(self.renderer, phi, rendering.check_box(box), rendering.check_size(size))

    def render_image(self, phi: torch.Tensor, size, tile: int = 256, pad: int = 8, mode: str = "exact",
                     progress: bool = False, box=rendering.FULL_CANVAS, correct=None) -> torch.Tensor:
        """The whole canvas (or ``box``) at ``size`` in tiles with bounded memory (see
        :func:`rendering.render_image`).

        Default ``mode="exact"``: the image does not depend on the tile size (equal to one ``render`` call);
        ``mode="official"`` reproduces the official sampler's patchwise output.
        """
        self._check_field(phi)
        return rendering.render_image(self.renderer, phi, rendering.check_size(size), tile, pad, mode, progress,
                                      rendering.check_box(box), correct)

    def render_bands(self, phi: torch.Tensor, size, tile: int = 256, pad: int = 8, mode: str = "exact",
                     progress: bool = False, uint8: bool = False, box=rendering.FULL_CANVAS, correct=None):
        """The whole canvas (or ``box``) at ``size`` as ``(first row, band)`` pairs, top to bottom (see
        :func:`rendering.render_bands`): for writing canvases larger than memory."""
        self._check_field(phi)
        return rendering.render_bands(self.renderer, phi, rendering.check_size(size), tile, pad, mode, progress,
                                      uint8, rendering.check_box(box), correct)

    # ------------------------------------------------------------------------------------------- diffusion
    def _require_unet(self) -> UNet2DModel:
        if self.unet is None:
            raise RuntimeError("this model has no diffusion denoiser (autoencoder only)")
        return self.unet

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.scheduler.alphas_cumprod

    def denoise(self, z_t: torch.Tensor, t) -> torch.Tensor:
        """Noise prediction ``eps`` for noisy (scaled) latents ``z_t`` at integer timestep(s) ``t``, whatever the
        denoiser predicts (the scheduler's ``prediction_type``): samplers and guidance see one quantity."""
        unet = self._require_unet()
        _check_channels("z_t", z_t, self.config.z_shape[0])
        t = torch.as_tensor(t, device=z_t.device)
        if t.dim() == 0:
            t = t.expand(z_t.shape[0])
        out = unet(z_t, t).sample
        if self.scheduler.config.prediction_type == "v_prediction":
            # v = sqrt(a) eps - sqrt(1 - a) x0 and z_t = sqrt(a) x0 + sqrt(1 - a) eps: eps = sqrt(a) v + sqrt(1-a) z_t
            a = self.alphas_cumprod.to(z_t)[t].view(-1, *([1] * (z_t.dim() - 1)))
            out = a.sqrt() * out + (1 - a).sqrt() * z_t
        return out

    def sample(
        self,
        batch_size: int,
        steps: int | None = None,
        eta: float | None = None,
        generator=None,
        noise: torch.Tensor | None = None,
        callback: Callable[[dict], None] | None = None,
        progress: bool = True,
    ) -> torch.Tensor:
        """Unconditional DDIM samples (latents ``z0``, in encoder units); decode and render them to get images.
        (:func:`infd_solve.samplers.sample_ddim` over this model's denoiser.)

        ``steps`` defaults to the solver's (:data:`infd_solve.options.DEFAULT_STEPS`); ``eta`` to the
        checkpoint's (official: 1.0). ``generator`` may be one generator or one per
        sample; ``noise`` (B x C x h x w) fixes the start.
        """
        from .. import checks
        from ..options import DEFAULT_STEPS
        from ..samplers.ddim import ddim_timesteps, initial_noise, sample_ddim

        self._require_unet()
        steps = DEFAULT_STEPS if steps is None else steps
        batch_size = checks.integer(batch_size, "batch_size", 1)
        eta = self.config.ddim_eta if eta is None else checks.number(eta, "eta", 0.0, 1.0)
        x = initial_noise((batch_size, *self.config.z_shape), generator, noise, self.device, self.dtype)
        timesteps = ddim_timesteps(steps, self.scheduler.config.num_train_timesteps)
        with torch.no_grad():
            z = sample_ddim(self.denoise, x, self.alphas_cumprod, timesteps, eta, generator, callback, progress)
        return self.unscale(z)

    def scale(self, z: torch.Tensor) -> torch.Tensor:
        """A latent in the decoder's units (what :meth:`encode` gives) in the denoiser's space, what samplers see:
        ``(z - latent_shift) * latent_scale``."""
        shift, scale = self._latent_affine(z)
        return (z - shift) * scale

    def unscale(self, z: torch.Tensor) -> torch.Tensor:
        """A latent of the denoiser's space (what samplers see) in the decoder's units; undoes :meth:`scale`."""
        shift, scale = self._latent_affine(z)
        return z / scale + shift

    def _latent_affine(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``latent_shift`` and ``latent_scale`` as tensors that broadcast over ``B x C x h x w`` latents."""
        as_tensor = lambda v: torch.as_tensor(v, dtype=z.dtype, device=z.device).reshape(-1, 1, 1)
        return as_tensor(self.config.latent_shift or 0.0), as_tensor(self.config.latent_scale)

    # ------------------------------------------------------------------------------------------- utilities
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (atomically, never half-written)."""
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_directory(directory) as tmp:
            (tmp / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
        return Path(directory)
