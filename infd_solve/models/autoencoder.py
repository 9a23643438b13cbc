"""Encoder, vector quantizer and field decoder of an INFD model, built from diffusers' VAE blocks.

The architecture is the VQGAN "f4" stack of the official INFD code: the encoder maps an image to a latent
``z`` (e.g. 3x64x64 for 256x256 input); the decoder maps a (quantized) latent to the feature field ``phi``,
the residual stream *before* the usual output norm/conv ("give_pre_end"), e.g. 128x256x256.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
import torch.utils.checkpoint
from diffusers.models.autoencoders.vae import Decoder, Encoder, VectorQuantizer
from diffusers.models.resnet import ResnetBlock2D
from torch import nn


@dataclass
class ConvStackConfig:
    """Options shared by the encoder and the decoder (names follow the official ``encoder_vqf4`` args)."""

    # Not a field: conv-stack configs are saved without a kind, as they always were (a patch code says its kind).
    kind: ClassVar[str] = "conv_stack"
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()  # spatial sizes (of the image-size ladder) with extra attention
    z_channels: int = 3
    resolution: int = 256  # encoder input size; only decides where attn_resolutions apply
    in_channels: int = 3

    def __post_init__(self):
        if not self.ch_mult or any(int(m) != m or m < 1 for m in self.ch_mult):
            raise ValueError(f"ch_mult must be a non-empty list of positive integers (got {list(self.ch_mult)})")
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        if self.ch % 32:
            raise ValueError(f"ch must be a multiple of 32 for GroupNorm(32) (got {self.ch})")

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        """Output channels of each level; the decoder's field has ``block_out_channels[0]``.

        The encoder's ``conv_in`` always outputs ``ch`` (the official ``in_ch_mult`` starts with 1), so when
        ``ch_mult[0] != 1`` its first level widens ``ch -> ch * ch_mult[0]`` in its first resnet.
        """
        return tuple(self.ch * m for m in self.ch_mult)

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def field_channels(self) -> int:
        """Channels of the decoder's field (what the renderer reads)."""
        return self.block_out_channels[0]

    def has_attention(self, level: int, decoder: bool = False) -> bool:
        """Whether ``level`` (0 = finest) has attention after each resnet.

        The official encoder halves ``resolution`` going down; its decoder starts from
        ``resolution // 2**(L-1)`` and doubles going up, which differs when ``resolution`` is not divisible.
        """
        if decoder:
            size = self.resolution // self.downsampling * 2 ** (len(self.ch_mult) - 1 - level)
        else:
            size = self.resolution // 2**level
        return size in self.attn_resolutions

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class FieldEncoder(nn.Module):
    """Image in [-1, 1] at ``resolution`` -> pre-quantization latent ``z``."""

    def __init__(self, config: ConvStackConfig):
        super().__init__()
        self.config = config
        self.net = Encoder(
            in_channels=config.in_channels,
            out_channels=config.z_channels,
            down_block_types=tuple(
                "AttnDownEncoderBlock2D" if config.has_attention(l) else "DownEncoderBlock2D"
                for l in range(len(config.ch_mult))
            ),
            block_out_channels=config.block_out_channels,
            layers_per_block=config.num_res_blocks,
            double_z=False,
        )
        if config.ch_mult[0] != 1:
            # diffusers starts the first level at its output width (conv_in -> ch * ch_mult[0]); the official
            # encoder starts it at ch and widens in the level's first resnet (with a 1x1 shortcut conv).
            first = self.net.down_blocks[0].resnets[0]
            self.net.conv_in = nn.Conv2d(config.in_channels, config.ch, kernel_size=3, padding=1)
            self.net.down_blocks[0].resnets[0] = ResnetBlock2D(
                in_channels=config.ch, out_channels=first.out_channels, temb_channels=None,
                eps=first.norm1.eps, groups=first.norm1.num_groups, dropout=first.dropout.p,
            )
        self.quant_conv = nn.Conv2d(config.z_channels, config.z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.net(x))


class FieldDecoder(nn.Module):
    """(Quantized) latent -> feature field ``phi`` with ``ch * ch_mult[0]`` channels."""

    def __init__(self, config: ConvStackConfig):
        super().__init__()
        self.config = config
        self.post_quant_conv = nn.Conv2d(config.z_channels, config.z_channels, 1)
        levels = range(len(config.ch_mult) - 1, -1, -1)  # diffusers lists up blocks coarse to fine
        self.net = Decoder(
            in_channels=config.z_channels,
            out_channels=3,
            up_block_types=tuple(
                "AttnUpDecoderBlock2D" if config.has_attention(l, decoder=True) else "UpDecoderBlock2D"
                for l in levels
            ),
            block_out_channels=config.block_out_channels,
            layers_per_block=config.num_res_blocks,
        )
        # The up blocks already follow the official ladder for any ch_mult (conv_in -> ch * ch_mult[-1], level l
        # ends at ch * ch_mult[l]). The field is the residual stream before the RGB tail, so the tail is not
        # part of the model.
        del self.net.conv_norm_out, self.net.conv_act, self.net.conv_out

    @property
    def out_channels(self) -> int:
        return self.config.block_out_channels[0]

    def forward(self, z: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
        """``checkpoint``: keep only block outputs for the backward pass and recompute the rest (gradient
        checkpointing: less memory per sample in guided sampling, one more forward pass of the decoder)."""
        h = self.net.conv_in(self.post_quant_conv(z))
        for block in (self.net.mid_block, *self.net.up_blocks):
            if checkpoint and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(block, h, None, use_reentrant=False)
            else:
                h = block(h, None)
        return h


class Quantizer(VectorQuantizer):
    """Nearest-codebook snapping with a straight-through gradient (first index wins exact ties)."""

    def __init__(self, n_embed: int, dim: int, beta: float = 0.25):
        super().__init__(n_embed, dim, beta=beta, legacy=True)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(z_q, commitment_loss, indices[B, h, w])``."""
        z_q, loss, (_, _, indices) = super().forward(z)
        return z_q, loss, indices.view(z.shape[0], *z.shape[2:])
