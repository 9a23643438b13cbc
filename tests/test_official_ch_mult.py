"""Official checkpoints whose ``ch_mult`` / ``channel_mult`` does not start with 1.

The reference below is a plain-PyTorch re-implementation of the official (taming-style) Encoder/Decoder and of
the openai UNet, written from the layer order documented in ``fixtures/FORMAT.md``. Its module tree is named as
the official one, so its ``state_dict()`` is an official-format state dict. It is first checked against the
official code itself (the tiny fixture's outputs and key names, the FFHQ key list); then random official-format
checkpoints with other channel ladders are loaded through ``load_model`` and compared with it.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import infd_solve
from infd_solve.models.autoencoder import ConvStackConfig
from infd_solve.models.official import CheckpointError, config_from_official

from .helpers import ffhq_layout

TOL = 1e-4
STACK_DEFAULTS = {"ch": 128, "ch_mult": [1, 2, 4], "num_res_blocks": 2, "attn_resolutions": [], "z_channels": 3,
                  "resolution": 256}
UNET_DEFAULTS = {"in_channels": 3, "out_channels": 3, "model_channels": 224, "channel_mult": [1, 2, 3, 4],
                 "num_res_blocks": 2, "attention_resolutions": [8, 4, 2], "num_head_channels": 32}


def maxdiff(a, b):
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", autouse=True)
def no_grad():
    with torch.no_grad():
        yield


# ------------------------------------------------------------------------------ reference: VQGAN stacks
def swish(x):
    return x * torch.sigmoid(x)


def norm(channels):
    return nn.GroupNorm(32, channels, eps=1e-6)


class Resnet(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv2(swish(self.norm2(self.conv1(swish(self.norm1(x))))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class Attention(nn.Module):
    """Single head over all positions; q, k, v, proj_out are 1x1 convs."""

    def __init__(self, channels):
        super().__init__()
        self.norm = norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x):
        b, c, height, width = x.shape
        h = self.norm(x)
        q, k, v = (layer(h).flatten(2) for layer in (self.q, self.k, self.v))  # b, c, n
        weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)  # [query, key]
        return x + self.proj_out((v @ weights.transpose(1, 2)).view(b, c, height, width))


class Level(nn.Module):
    def __init__(self, cin, cout, blocks, attention):
        super().__init__()
        self.block = nn.ModuleList(Resnet(cin if i == 0 else cout, cout) for i in range(blocks))
        self.attn = nn.ModuleList(Attention(cout) for _ in range(blocks) if attention)

    def forward(self, h):
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


def conv_holder(channels, **kwargs):
    holder = nn.Module()  # official resamplers hold their conv as `.conv`
    holder.conv = nn.Conv2d(channels, channels, 3, **kwargs)
    return holder


def middle(channels):
    mid = nn.Module()
    mid.block_1, mid.attn_1, mid.block_2 = Resnet(channels, channels), Attention(channels), Resnet(channels, channels)
    return mid


def run_middle(mid, h):
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class RefEncoder(nn.Module):
    """conv_in (-> ch); per level: resnets (the first widens), attention, asymmetric-pad downsample; mid; tail."""

    def __init__(self, ch, ch_mult, num_res_blocks, attn_resolutions, z_channels, resolution):
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.down, size, c = nn.ModuleList(), resolution, ch
        for level, mult in enumerate(ch_mult):
            self.down.append(Level(c, ch * mult, num_res_blocks, size in attn_resolutions))
            c = ch * mult
            if level < len(ch_mult) - 1:
                self.down[-1].downsample = conv_holder(c, stride=2)
                size //= 2
        self.mid = middle(c)
        self.norm_out, self.conv_out = norm(c), nn.Conv2d(c, z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample.conv(F.pad(h, (0, 1, 0, 1)))
        return self.conv_out(swish(self.norm_out(run_middle(self.mid, h))))


class RefDecoder(nn.Module):
    """conv_in (-> ch*ch_mult[-1]); mid; levels coarse to fine with nearest upsample + conv; no tail."""

    def __init__(self, ch, ch_mult, num_res_blocks, attn_resolutions, z_channels, resolution):
        super().__init__()
        c, size = ch * ch_mult[-1], resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, c, 3, padding=1)
        self.mid = middle(c)
        levels = {}
        for level in reversed(range(len(ch_mult))):
            levels[level] = Level(c, ch * ch_mult[level], num_res_blocks + 1, size in attn_resolutions)
            c = ch * ch_mult[level]
            if level:
                levels[level].upsample = conv_holder(c, padding=1)
                size *= 2
        self.up = nn.ModuleList(levels[level] for level in range(len(ch_mult)))

    def forward(self, z):
        h = run_middle(self.mid, self.conv_in(z))
        for level in reversed(range(len(self.up))):
            h = self.up[level](h)
            if level:
                h = self.up[level].upsample.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return h


def encoder_stack(args):
    a = STACK_DEFAULTS | args
    return nn.Sequential(RefEncoder(**{k: a[k] for k in STACK_DEFAULTS}),
                         nn.Conv2d(a["z_channels"], a["z_channels"], 1))


def decoder_stack(args):
    a = STACK_DEFAULTS | args
    return nn.Sequential(nn.Conv2d(a["z_channels"], a["z_channels"], 1),
                         RefDecoder(**{k: a[k] for k in STACK_DEFAULTS}))


class RefRendererNet(nn.Module):
    def __init__(self, in_channels, hidden):
        super().__init__()
        self.model = nn.ModuleList([nn.Conv2d(in_channels, hidden, 3, padding=1), Resnet(hidden, hidden),
                                    Resnet(hidden, hidden)])
        self.norm_out, self.conv_out = norm(hidden), nn.Conv2d(hidden, 3, 3, padding=1)


# ---------------------------------------------------------------------------------- reference: openai UNet
def unet_norm(channels):
    return nn.GroupNorm(32, channels, eps=1e-5)


class Step(nn.ModuleList):
    """A sequence of layers that all receive the time embedding (named like the official blocks)."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb)
        return x


class Conv(nn.Conv2d):
    def forward(self, x, emb):
        return super().forward(x)


class UResnet(nn.Module):
    def __init__(self, cin, cout, emb):
        super().__init__()
        self.in_layers = nn.Sequential(unet_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, cout))
        self.out_layers = nn.Sequential(unet_norm(cout), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(cout, cout, 3, padding=1))
        self.skip_connection = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class UAttention(nn.Module):
    """Multi-head attention with the legacy head split: heads of [q (d), k (d), v (d)] channels."""

    def __init__(self, channels, head_channels):
        super().__init__()
        self.d = head_channels
        self.norm = unet_norm(channels)
        self.qkv, self.proj_out = nn.Conv1d(channels, 3 * channels, 1), nn.Conv1d(channels, channels, 1)

    def forward(self, x, emb):
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        q, k, v = self.qkv(self.norm(flat)).reshape(b * c // self.d, 3 * self.d, -1).split(self.d, dim=1)
        scale = self.d ** -0.25
        weights = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
        out = torch.einsum("bts,bcs->bct", weights, v).reshape(b, c, -1)
        return (flat + self.proj_out(out)).reshape(b, c, *spatial)


class UDown(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x, emb):
        return self.op(x)


class UUp(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, emb):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class RefUNet(nn.Module):
    def __init__(self, in_channels, out_channels, model_channels, channel_mult, num_res_blocks, attention_resolutions,
                 num_head_channels):
        super().__init__()
        mc, emb, d = model_channels, 4 * model_channels, num_head_channels
        self.mc = mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        c, ds = mc * channel_mult[0], 1
        self.input_blocks, skips = nn.ModuleList([Step([Conv(in_channels, c, 3, padding=1)])]), [c]
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers, c = [UResnet(c, mc * mult, emb)], mc * mult
                layers += [UAttention(c, d)] if ds in attention_resolutions else []
                self.input_blocks.append(Step(layers))
                skips.append(c)
            if level < len(channel_mult) - 1:
                self.input_blocks.append(Step([UDown(c)]))
                skips.append(c)
                ds *= 2
        self.middle_block = Step([UResnet(c, c, emb), UAttention(c, d), UResnet(c, c, emb)])
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers, c = [UResnet(c + skips.pop(), mc * channel_mult[level], emb)], mc * channel_mult[level]
                layers += [UAttention(c, d)] if ds in attention_resolutions else []
                if level and i == num_res_blocks:
                    layers.append(UUp(c))
                    ds //= 2
                self.output_blocks.append(Step(layers))
        self.out = nn.Sequential(unet_norm(c), nn.SiLU(), nn.Conv2d(c, out_channels, 3, padding=1))

    def forward(self, x, t):
        half = self.mc // 2
        angles = t.float()[:, None] * torch.exp(-math.log(10000) * torch.arange(half) / half)[None]
        emb = self.time_embed(torch.cat([torch.cos(angles), torch.sin(angles)], dim=1))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def unet(args):
    a = UNET_DEFAULTS | args
    return RefUNet(**{k: a[k] for k in UNET_DEFAULTS})


def perturb_norms(module, seed):
    generator = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.GroupNorm):  # non-trivial affine parameters, so every norm matters
            m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=generator))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=generator))
    return module


def prefixed(prefix, module):
    return {prefix + k: v for k, v in module.state_dict().items()}


def shapes(sd, prefix):
    return {k: tuple(v) if isinstance(v, tuple) else tuple(v.shape) for k, v in sd.items() if k.startswith(prefix)}


# ------------------------------------------------------------------- the reference is the official code
def test_reference_reproduces_official_fixture(official_path, reference):
    ckpt = torch.load(official_path, weights_only=True)
    args, sd = ckpt["model"]["args"], ckpt["model"]["sd"]
    parts = {"encoder.": encoder_stack(args["encoder"]["args"]), "decoder.": decoder_stack(args["decoder"]["args"]),
             "z_dm_ema.": unet(args["z_dm"]["args"])}
    for prefix, module in parts.items():
        assert shapes(prefixed(prefix, module), prefix) == shapes(sd, prefix), prefix  # official names and shapes
        module.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
    assert maxdiff(parts["encoder."](reference["x"]), reference["z"]) < TOL
    assert maxdiff(parts["decoder."](reference["z_q"]), reference["z_dec"]) < TOL
    assert maxdiff(parts["z_dm_ema."](reference["zt"], reference["t"]), reference["eps_ema"]) < TOL


def test_reference_has_ffhq_names_and_shapes():
    args, official = ffhq_layout()
    with torch.device("meta"):
        parts = {"encoder.": encoder_stack(args["encoder"].get("args", {})),
                 "decoder.": decoder_stack(args["decoder"].get("args", {})), "z_dm_ema.": unet({})}
    for prefix, module in parts.items():
        assert shapes(prefixed(prefix, module), prefix) == shapes(official, prefix), prefix


# ------------------------------------------------------------------------ other channel ladders, end to end
def stack(ch_mult, **kw):
    return {"ch": 32, "ch_mult": ch_mult, "num_res_blocks": 1, "resolution": 32, "z_channels": 3} | kw


CASES = {
    # first level widens 32 -> 64; denoiser also starts at 2 * model_channels
    "2-1": (stack([2, 1]), stack([2, 1]), {"channel_mult": [2, 1], "num_res_blocks": 1}),
    # two resnets per level, attention on both levels of both stacks; denoiser 32 -> 96 with attention at ds 1, 2
    "2-4": (stack([2, 4], num_res_blocks=2, resolution=16, attn_resolutions=[16, 8]),
            stack([2, 4], num_res_blocks=2, resolution=16, attn_resolutions=[16, 8]),
            {"channel_mult": [3, 2], "num_res_blocks": 2, "attention_resolutions": [1, 2]}),
    # ch_mult[0] == 1; resolution 18 is not divisible by 4, so the encoder's size ladder is 18, 9, 4 and the
    # decoder's 4, 8, 16: attention on encoder level 1 (9) but decoder level 0 (16)
    "1-2-4": (stack([1, 2, 4], attn_resolutions=[9, 16], resolution=18),
              stack([1, 2, 4], attn_resolutions=[9, 16], resolution=18), None),
    # encoder and decoder with different ladders (and widths)
    "3-2/2-1": (stack([3, 2]), stack([2, 1], ch=64), None),
}


def official_checkpoint(official_path, enc_args, dec_args, unet_args, seed):
    """An official-format checkpoint (structure of tiny_official.pth) with random weights, and the references."""
    template = torch.load(official_path, weights_only=True)
    torch.manual_seed(seed)
    field = dec_args["ch"] * dec_args["ch_mult"][0]
    levels = len(enc_args["ch_mult"]) - 1
    args = {"encoder": {"name": "encoder_vqf4", "args": enc_args}, "z_shape": [3, 8, 8], "quantizer": True,
            "n_embed": 64, "decoder": {"name": "decoder_vqf4", "args": dec_args},
            "renderer": {"name": "renderer_concat_wrapper", "args": {
                "z_dec_channels": field, "net": {"name": "simple_renderer_net", "args": {"hidden_channels": 32}}}},
            "loss_cfg": {"gan_g_loss": 0.75}, "adaptive_gan_weight": True}
    refs = {"encoder": perturb_norms(encoder_stack(enc_args), seed),
            "decoder": perturb_norms(decoder_stack(dec_args), seed + 1)}
    sd = prefixed("encoder.", refs["encoder"])
    sd["quantizer.embedding.weight"] = torch.randn(64, 3)
    sd |= prefixed("decoder.", refs["decoder"])
    sd |= prefixed("renderer.net.", perturb_norms(RefRendererNet(field + 4, 32), seed + 2))
    if unet_args is not None:
        unet_args = {"image_size": 8, "model_channels": 32, "num_head_channels": 16,
                     "attention_resolutions": [2]} | unet_args
        args["z_dm"] = {"name": "openai_unet", "args": unet_args}
        args["z_dp"] = {"linear_beta_start": 0.0015, "linear_beta_end": 0.0195}
        refs["z_dm_ema"] = perturb_norms(unet(unet_args), seed + 3)
        raw = perturb_norms(unet(unet_args), seed + 4)
        sd |= prefixed("z_dm.", raw) | prefixed("z_dm_ema.", refs["z_dm_ema"])
    sd |= {k: v for k, v in template["model"]["sd"].items() if k.startswith(("perc_loss.", "disc."))}
    model = {"name": "infd", "args": args}
    cfg = template["cfg"] | {"model": model}
    ckpt = template | {"cfg": cfg, "model": model | {"sd": sd}}
    x = torch.rand(2, 3, 8 * 2**levels, 8 * 2**levels) * 2 - 1
    return ckpt, refs, x


def quantize(z, codebook):
    """Nearest codebook row per position (float64 distances), and the smallest decision margin."""
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).double()
    d = torch.cdist(flat, codebook.double()) ** 2
    two = d.topk(2, dim=1, largest=False)
    indices = two.indices[:, 0]
    z_q = codebook[indices].view(z.shape[0], *z.shape[2:], z.shape[1]).permute(0, 3, 1, 2)
    return z_q, indices.view(z.shape[0], *z.shape[2:]), (two.values[:, 1] - two.values[:, 0]).min().item()


@pytest.mark.parametrize("case", CASES)
def test_load_and_match_reference(case, official_path, tmp_path, one_thread):
    enc_args, dec_args, unet_args = CASES[case]
    ckpt, refs, x = official_checkpoint(official_path, enc_args, dec_args, unet_args, seed=10 * list(CASES).index(case))
    torch.save(ckpt, tmp_path / "official.pth")
    m = infd_solve.load_model(tmp_path / "official.pth")

    z = m.encode(x)
    assert maxdiff(z, refs["encoder"](x)) < TOL
    codebook = ckpt["model"]["sd"]["quantizer.embedding.weight"]
    z_q, indices, margin = quantize(z, codebook)
    assert margin > 1e-5  # no near-tie: the nearest row is decided far above float32 noise in z
    assert torch.equal(m.quantizer(z)[2], indices)
    phi = m.decode(z)
    field = dec_args["ch"] * dec_args["ch_mult"][0]
    assert phi.shape == (2, field, *(s * 2 ** (len(dec_args["ch_mult"]) - 1) for s in (8, 8)))
    assert maxdiff(phi, refs["decoder"](z_q)) < TOL
    rgb = m.render(phi, (12, 20))
    assert rgb.shape == (2, 3, 12, 20) and torch.isfinite(rgb).all()

    if unet_args is not None:
        zt, t = torch.randn(4, 3, 8, 8), torch.tensor([0, 10, 700, 999])
        assert maxdiff(m.denoise(zt, t), refs["z_dm_ema"](zt, t)) < TOL
        z0 = m.sample(1, steps=2, eta=0.0, noise=torch.randn(1, 3, 8, 8), progress=False)
        assert torch.isfinite(z0).all()

    # our own format keeps the layout: save and reload gives the same model
    m.save(tmp_path / "ours")
    again = infd_solve.load_model(tmp_path / "ours")
    assert torch.equal(again.encode(x), z) and torch.equal(again.decode(z), phi)


def test_first_level_widening_is_in_the_first_resnet():
    """ch_mult[0] != 1: conv_in keeps ch and the first resnet widens (with a shortcut conv); [1, ...] is unchanged."""
    from infd_solve.models.autoencoder import FieldEncoder

    widened = FieldEncoder(ConvStackConfig(ch=32, ch_mult=(2, 1), num_res_blocks=1)).state_dict()
    assert widened["net.conv_in.weight"].shape == (32, 3, 3, 3)
    assert widened["net.down_blocks.0.resnets.0.conv1.weight"].shape == (64, 32, 3, 3)
    assert widened["net.down_blocks.0.resnets.0.conv_shortcut.weight"].shape == (64, 32, 1, 1)
    plain = FieldEncoder(ConvStackConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1)).state_dict()
    assert plain["net.conv_in.weight"].shape == (32, 3, 3, 3)
    assert not any(k.startswith("net.down_blocks.0.resnets.0.conv_shortcut") for k in plain)


def test_denoiser_time_embedding_keeps_official_width():
    config = config_from_official({"name": "infd", "args": {
        "encoder": {"name": "encoder_vqf4", "args": stack([1, 2])},
        "decoder": {"name": "decoder_vqf4", "args": stack([1, 2])},
        "z_shape": [3, 8, 8], "renderer": {"name": "renderer_concat_wrapper", "args": {
            "z_dec_channels": 32, "net": {"name": "simple_renderer_net", "args": {"hidden_channels": 32}}}},
        "z_dm": {"name": "openai_unet", "args": {"model_channels": 32, "channel_mult": [2, 1]}}}})
    with torch.device("meta"):
        unet_model = infd_solve.INFDModel(config).unet
    assert unet_model.conv_in.out_channels == 64
    assert unet_model.time_embedding.linear_1.weight.shape == (128, 64)  # 64 sinusoids, 32 of them used
    assert unet_model.time_embedding.linear_2.weight.shape == (128, 128)  # official 4 * model_channels


def _args(enc, dec, z_dec_channels):
    return {"encoder": {"name": "encoder_vqf4", "args": enc}, "decoder": {"name": "decoder_vqf4", "args": dec},
            "z_shape": [3, 8, 8], "renderer": {"name": "renderer_concat_wrapper", "args": {
                "z_dec_channels": z_dec_channels,
                "net": {"name": "simple_renderer_net", "args": {"hidden_channels": 32}}}}}


@pytest.mark.parametrize("enc, dec, z_dec, message", [
    (stack([2, 1]), stack([2, 1]), 32, r"renderer.feature_channels=32 but the decoder's field has 64 channels"),
    (stack([0, 1]), stack([1, 1]), 32, r"encoder args cannot be built: ch_mult must be .*positive integers"),
    (stack([]), stack([1, 1]), 32, r"encoder args cannot be built: ch_mult must be a non-empty"),
    (stack([1, 1], ch=48), stack([1, 1]), 32, r"encoder args cannot be built: ch must be a multiple of 32"),
])
def test_inexpressible_configs_say_why(enc, dec, z_dec, message):
    with pytest.raises(CheckpointError, match=message):
        config_from_official({"name": "infd", "args": _args(enc, dec, z_dec)}, path="x.pth")
