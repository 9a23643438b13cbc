"""Reading checkpoints written by the official INFD code (yinboc/infd).

A checkpoint is a ``torch.save`` dict ``{"cfg", "model": {"name": "infd", "args", "sd"}, "optimizers", ...}``.
We read it with ``weights_only=True`` (a file that carries code is refused, nothing is executed), translate
``model.args`` into an :class:`INFDConfig`, and rename the state dict onto our diffusers-based modules.
The renaming is the only place that knows the official layer indices. The official format (keys, layer order,
numerics) is described in ``tests/fixtures/FORMAT.md``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..checkpoints import CheckpointError, UnsafeCheckpointError, load_torch_file  # noqa: F401 (re-exported)
from .autoencoder import ConvStackConfig
from .infd import INFDConfig
from .renderer import RendererConfig

TRAINING_ONLY_PREFIXES = ("perc_loss.", "disc.")  # LPIPS and discriminator: training losses only


def read_checkpoint(path: str | Path) -> dict:
    """An official checkpoint file read safely (:func:`infd_solve.checkpoints.load_torch_file`)."""
    return load_torch_file(path, "official INFD checkpoint")


def _spec(spec, what: str, expected: str, path) -> dict:
    if not isinstance(spec, dict) or spec.get("name") != expected:
        name = spec.get("name") if isinstance(spec, dict) else spec
        raise CheckpointError(f"{path}: unsupported {what} {name!r}; infd-solve reads {expected!r}")
    return dict(spec.get("args") or {})


def _conv_stack(args: dict, what: str, path) -> ConvStackConfig:
    unsupported = {"double_z": False, "give_pre_end": True, "resamp_with_conv": True, "attn_type": "vanilla",
                   "use_linear_attn": False}
    for key, ok in unsupported.items():
        if args.get(key, ok) != ok:
            raise CheckpointError(f"{path}: {what} option {key}={args[key]!r} is not supported (only {ok!r})")
    if args.get("out_ch", 3) != 3 or args.get("in_channels", 3) != 3:
        raise CheckpointError(f"{path}: {what} with in/out channels other than 3 is not supported")
    keys = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "resolution")
    try:
        return ConvStackConfig(**{k: args[k] for k in keys if k in args})
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: {what} args cannot be built: {e}") from None


def unet_config_from_official(args: dict) -> dict:
    """diffusers ``UNet2DModel`` kwargs equivalent to the official ``openai_unet`` with ``args``."""
    a = {"image_size": 64, "in_channels": 3, "out_channels": 3, "model_channels": 224,
         "channel_mult": [1, 2, 3, 4], "num_res_blocks": 2, "attention_resolutions": [8, 4, 2],
         "num_head_channels": 32, "dropout": 0.0, "num_heads": 1, "use_scale_shift_norm": False,
         "resblock_updown": False, "num_classes": None, "use_spatial_transformer": False,
         "use_new_attention_order": False, "conv_resample": True, "dims": 2, "noisy_z_cond": False} | dict(args)
    for key, ok in {"resblock_updown": False, "num_classes": None, "use_spatial_transformer": False,
                    "use_new_attention_order": False, "conv_resample": True, "dims": 2, "noisy_z_cond": False}.items():
        if a[key] != ok:
            raise CheckpointError(f"denoiser option {key}={a[key]!r} is not supported (only {ok!r})")
    if a["num_head_channels"] in (-1, None):
        raise CheckpointError("denoiser with num_heads instead of num_head_channels is not supported")
    mc, mult = a["model_channels"], list(a["channel_mult"])
    if not mult or any(int(m) != m or m < 1 for m in mult):
        raise CheckpointError(f"denoiser channel_mult must be positive integers, got {mult}")
    mult = [int(m) for m in mult]
    attn = [2**level in a["attention_resolutions"] for level in range(len(mult))]
    width = mc * mult[0]  # conv_in output; diffusers also sizes its sinusoidal timestep embedding by it
    extra = {}
    if width != mc:
        # The official embedding has mc sinusoids and 4*mc hidden units whatever channel_mult[0] is. diffusers
        # uses `width` sinusoids; shifting the frequency denominator makes its first mc//2 frequencies the
        # official ones, and the conversion gives the remaining sinusoids zero weights (_time_embed_in).
        extra = {"time_embedding_dim": 4 * mc}
    return {
        "sample_size": a["image_size"],
        "in_channels": a["in_channels"],
        "out_channels": a["out_channels"],
        "block_out_channels": [mc * m for m in mult],
        "layers_per_block": a["num_res_blocks"],
        "down_block_types": ["AttnDownBlock2D" if at else "DownBlock2D" for at in attn],
        "up_block_types": ["AttnUpBlock2D" if at else "UpBlock2D" for at in reversed(attn)],
        "attention_head_dim": a["num_head_channels"],
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": True,  # official embedding is [cos, sin]
        "freq_shift": width // 2 - mc // 2,
        "downsample_padding": 1,
        "dropout": a["dropout"],
        "resnet_time_scale_shift": "scale_shift" if a["use_scale_shift_norm"] else "default",
    } | extra


def config_from_official(model: dict, path="checkpoint") -> INFDConfig:
    """Translate the official ``ckpt["model"]`` (name + args) into an :class:`INFDConfig`."""
    if not isinstance(model, dict) or model.get("name") != "infd" or not isinstance(model.get("args"), dict):
        name = model.get("name") if isinstance(model, dict) else type(model).__name__
        raise CheckpointError(f"{path}: not an INFD model (model name {name!r}, expected 'infd' with 'args')")
    args = model["args"]
    for key in ("encoder", "decoder", "renderer", "z_shape"):
        if key not in args:
            raise CheckpointError(f"{path}: model args lack {key!r}")
    if args.get("z_gaussian"):
        raise CheckpointError(f"{path}: Gaussian (KL) latents are not supported")
    if args.get("z_dm_cond") is not None:
        raise CheckpointError(f"{path}: conditional denoisers are not supported")
    wrapper = _spec(args["renderer"], "renderer", "renderer_concat_wrapper", path)
    for key in ("co_pe_dim", "ce_pe_dim", "x_channels"):
        if wrapper.get(key) is not None:
            raise CheckpointError(f"{path}: renderer option {key} is not supported")
    net = _spec(wrapper.get("net"), "renderer net", "simple_renderer_net", path)
    if net.get("out_channels", 3) != 3:
        raise CheckpointError(f"{path}: renderer out_channels must be 3")
    renderer = RendererConfig(
        feature_channels=wrapper["z_dec_channels"],
        hidden_channels=net.get("hidden_channels", 256),  # not stored only if default
        kernel_size=net.get("kernel_size", 3),
        normalize=net.get("normalize", True),
    )
    z_dp = args.get("z_dp") or {}
    encoder = _conv_stack(_spec(args["encoder"], "encoder", "encoder_vqf4", path), "encoder", path)
    decoder = _conv_stack(_spec(args["decoder"], "decoder", "decoder_vqf4", path), "decoder", path)
    unet = unet_config_from_official(_spec(args["z_dm"], "denoiser", "openai_unet", path)) \
        if args.get("z_dm") is not None else None
    try:
        return INFDConfig(
            z_shape=tuple(args["z_shape"]),
            encoder=encoder,
            decoder=decoder,
            n_embed=args.get("n_embed") if args.get("quantizer", False) else None,
            renderer=renderer,
            unet=unet,
            scheduler={"num_train_timesteps": 1000, "beta_schedule": "linear",
                       "beta_start": z_dp.get("linear_beta_start", 1e-4),
                       "beta_end": z_dp.get("linear_beta_end", 0.02)},
            ddim_eta=args.get("z_ddim_eta", 1.0),
        )
    except ValueError as e:  # parts that do not fit together, e.g. z_dec_channels vs the decoder's field
        raise CheckpointError(f"{path}: inconsistent model args: {e}") from None


# ------------------------------------------------------------------------------------------------ renaming
def _key_table(config: INFDConfig, unet_prefix: str) -> list[tuple[str, str, str]]:
    """``(official prefix, our prefix, kind)`` for every block; kind selects how suffixes are renamed."""
    rows = [("encoder.0.conv_in.", "encoder.net.conv_in.", "plain"),
            ("encoder.0.norm_out.", "encoder.net.conv_norm_out.", "plain"),
            ("encoder.0.conv_out.", "encoder.net.conv_out.", "plain"),
            ("encoder.1.", "encoder.quant_conv.", "plain"),
            ("quantizer.", "quantizer.", "plain"),
            ("decoder.0.", "decoder.post_quant_conv.", "plain"),
            ("decoder.1.conv_in.", "decoder.net.conv_in.", "plain")]
    for src, dst in (("encoder.0.mid.", "encoder.net.mid_block."), ("decoder.1.mid.", "decoder.net.mid_block.")):
        rows += [(src + "block_1.", dst + "resnets.0.", "vq_resnet"),
                 (src + "attn_1.", dst + "attentions.0.", "vq_attn"),
                 (src + "block_2.", dst + "resnets.1.", "vq_resnet")]
    enc, dec = config.encoder, config.decoder
    for level in range(len(enc.ch_mult)):
        src, dst = f"encoder.0.down.{level}.", f"encoder.net.down_blocks.{level}."
        for i in range(enc.num_res_blocks):
            rows.append((f"{src}block.{i}.", f"{dst}resnets.{i}.", "vq_resnet"))
            if enc.has_attention(level):
                rows.append((f"{src}attn.{i}.", f"{dst}attentions.{i}.", "vq_attn"))
        if level < len(enc.ch_mult) - 1:
            rows.append((f"{src}downsample.conv.", f"{dst}downsamplers.0.conv.", "plain"))
    for level in range(len(dec.ch_mult)):
        src, dst = f"decoder.1.up.{level}.", f"decoder.net.up_blocks.{len(dec.ch_mult) - 1 - level}."
        for i in range(dec.num_res_blocks + 1):
            rows.append((f"{src}block.{i}.", f"{dst}resnets.{i}.", "vq_resnet"))
            if dec.has_attention(level, decoder=True):
                rows.append((f"{src}attn.{i}.", f"{dst}attentions.{i}.", "vq_attn"))
        if level > 0:
            rows.append((f"{src}upsample.conv.", f"{dst}upsamplers.0.conv.", "plain"))
    rows += [("renderer.net.model.0.", "renderer.conv_in.", "plain"),
             ("renderer.net.norm_out.", "renderer.norm_out.", "plain"),
             ("renderer.net.conv_out.", "renderer.conv_out.", "plain")]
    rows += [(f"renderer.net.model.{i + 1}.", f"renderer.resnets.{i}.", "plain")
             for i in range(config.renderer.num_res_blocks)]
    if config.unet is not None:
        rows += _unet_table(config.unet, unet_prefix)
    return rows


def _unet_table(unet: dict, prefix: str) -> list[tuple[str, str, str]]:
    levels = len(unet["block_out_channels"])
    per_level = unet["layers_per_block"]
    attn = [t.startswith("Attn") for t in unet["down_block_types"]]
    rows = [(prefix + "time_embed.0.", "unet.time_embedding.linear_1.", "unet_time_in"),
            (prefix + "time_embed.2.", "unet.time_embedding.linear_2.", "plain"),
            (prefix + "input_blocks.0.0.", "unet.conv_in.", "plain"),
            (prefix + "middle_block.0.", "unet.mid_block.resnets.0.", "unet_resnet"),
            (prefix + "middle_block.1.", "unet.mid_block.attentions.0.", "unet_attn"),
            (prefix + "middle_block.2.", "unet.mid_block.resnets.1.", "unet_resnet"),
            (prefix + "out.0.", "unet.conv_norm_out.", "plain"),
            (prefix + "out.2.", "unet.conv_out.", "plain")]
    block = 1  # official input_blocks are numbered across levels; block 0 is conv_in
    for level in range(levels):
        for i in range(per_level):
            rows.append((f"{prefix}input_blocks.{block}.0.", f"unet.down_blocks.{level}.resnets.{i}.", "unet_resnet"))
            if attn[level]:
                rows.append((f"{prefix}input_blocks.{block}.1.", f"unet.down_blocks.{level}.attentions.{i}.",
                             "unet_attn"))
            block += 1
        if level < levels - 1:
            rows.append((f"{prefix}input_blocks.{block}.0.op.", f"unet.down_blocks.{level}.downsamplers.0.conv.",
                         "plain"))
            block += 1
    block = 0
    for level in reversed(range(levels)):
        up = levels - 1 - level
        for i in range(per_level + 1):
            rows.append((f"{prefix}output_blocks.{block}.0.", f"unet.up_blocks.{up}.resnets.{i}.", "unet_resnet"))
            if attn[level]:
                rows.append((f"{prefix}output_blocks.{block}.1.", f"unet.up_blocks.{up}.attentions.{i}.", "unet_attn"))
            if level > 0 and i == per_level:
                position = 2 if attn[level] else 1
                rows.append((f"{prefix}output_blocks.{block}.{position}.conv.",
                             f"unet.up_blocks.{up}.upsamplers.0.conv.", "plain"))
            block += 1
    return rows


_SUFFIXES = {
    "vq_resnet": {"norm1.": "norm1.", "conv1.": "conv1.", "norm2.": "norm2.", "conv2.": "conv2.",
                  "nin_shortcut.": "conv_shortcut."},
    "vq_attn": {"norm.": "group_norm.", "q.": "to_q.", "k.": "to_k.", "v.": "to_v.", "proj_out.": "to_out.0."},
    "unet_resnet": {"in_layers.0.": "norm1.", "in_layers.2.": "conv1.", "emb_layers.1.": "time_emb_proj.",
                    "out_layers.0.": "norm2.", "out_layers.3.": "conv2.", "skip_connection.": "conv_shortcut."},
    "unet_attn": {"norm.": "group_norm.", "proj_out.": "to_out.0."},
}


def _time_embed_in(weight: torch.Tensor, unet: dict) -> torch.Tensor:
    """Official first time-embedding Linear weight ``[4mc, mc]`` -> ours ``[4mc, width]``.

    Official input: ``[cos(a_0..a_{mc//2-1}), sin(...)]`` (plus a zero column if mc is odd). Ours has ``width``
    sinusoids, ``[cos (width//2), sin (width//2)]``, whose first mc//2 frequencies are the official ones (see
    ``freq_shift`` in :func:`unet_config_from_official`); the others get zero weights.
    """
    width = unet["block_out_channels"][0]
    mc = unet.get("time_embedding_dim", 4 * width) // 4
    if width == mc or weight.dim() != 2 or weight.shape[1] != mc:
        return weight  # nothing to spread (or a wrong shape, which the loader then reports)
    half = mc // 2
    out = weight.new_zeros(weight.shape[0], width)
    out[:, :half] = weight[:, :half]
    out[:, width // 2:width // 2 + half] = weight[:, half:2 * half]
    return out


def _convert(kind: str, suffix: str, value: torch.Tensor, unet: dict) -> dict[str, torch.Tensor] | None:
    """Our ``{suffix: tensor}`` for one official tensor, or None if the suffix is unknown."""
    if kind == "unet_time_in":
        return {suffix: _time_embed_in(value, unet) if suffix == "weight" else value}
    if kind == "unet_attn" and suffix.startswith("qkv."):
        head_dim = unet["attention_head_dim"]
        # Legacy head split: the 3C channels are `heads` groups of [q (d), k (d), v (d)].
        channels = value.shape[0] // 3
        grouped = value.reshape(channels // head_dim, 3, head_dim, *value.shape[1:])
        param = suffix[len("qkv."):]
        return {f"to_{n}.{param}": grouped[:, j].reshape(channels, *value.shape[1:]).squeeze(-1)
                for j, n in enumerate("qkv")}
    if kind == "plain":
        return {suffix: value}
    for src, dst in _SUFFIXES[kind].items():
        if suffix.startswith(src):
            new = dst + suffix[len(src):]
            if kind.endswith("attn") and new.endswith("weight") and value.dim() > 2:
                value = value.reshape(value.shape[0], value.shape[1])  # 1x1 conv -> linear
            return {new: value}
    return None


def convert_state_dict(sd: dict, config: INFDConfig, ema: bool = True) -> tuple[dict, list[str], list[str]]:
    """Official state dict -> ``(ours, skipped, unexpected)``.

    ``skipped``: keys present but not needed for inference (LPIPS, discriminator, the other denoiser copy).
    ``unexpected``: keys that fit no part of the model described by ``config``.
    """
    use = "z_dm_ema." if ema else "z_dm."
    other = "z_dm." if ema else "z_dm_ema."
    table = sorted(_key_table(config, use), key=lambda row: -len(row[0]))
    out, skipped, unexpected = {}, [], []
    for key, value in sd.items():
        if key.startswith(TRAINING_ONLY_PREFIXES) or key.startswith(other):
            skipped.append(key)
            continue
        row = next((r for r in table if key.startswith(r[0])), None)
        converted = _convert(row[2], key[len(row[0]):], value, config.unet or {}) if row else None
        if converted is None:
            unexpected.append(key)
            continue
        out.update({row[1] + k: v for k, v in converted.items()})
    return out, skipped, unexpected


def load_official(path: str | Path, ema: bool = True):
    """Build an :class:`INFDModel` from an official checkpoint; EMA denoiser weights by default."""
    from .infd import INFDModel
    from ..checkpoints import load_checked_state_dict

    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        keys = sorted(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path}: not an official INFD checkpoint: expected a dict with 'model' (name, args, sd), got {keys}"
        )
    config = config_from_official(ckpt["model"], path)
    sd = ckpt["model"].get("sd")
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: model has no state dict 'sd'")
    if ema and config.unet is not None and not any(k.startswith("z_dm_ema.") for k in sd):
        warnings.warn(f"{path} has no EMA denoiser (z_dm_ema); using the raw weights z_dm", stacklevel=2)
        ema = False
    ours, skipped, unexpected = convert_state_dict(sd, config, ema)
    model = INFDModel(config)
    load_checked_state_dict(model, ours, path, unexpected=unexpected)
    model.skipped_keys = skipped
    return model.eval()
