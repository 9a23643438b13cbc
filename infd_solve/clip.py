"""CLIP models for guidance, loaded offline: ``load_clip`` plus differentiable ``encode_image`` / ``encode_text``.

Three sources, none of which ever reaches the network:

* ``"default"``: the small domain CLIP shipped in ``infd_solve.pretrained`` (trained on procedural landscapes by
  ``recipes/train_clip.py``);
* a directory holding ``open_clip_config.json`` (``{"model_cfg": ..., "preprocess_cfg": ...}``) and weights beside
  it, loaded through open_clip's ``local-dir:`` mechanism, so the model carries its own preprocessing statistics;
* a weights file (``.pt`` / ``.pth`` / ``.bin`` / ``.safetensors``) for an open_clip architecture named by
  ``model_name`` (a built-in name such as ``"ViT-B-32"`` or one registered with ``open_clip.add_model_config``).
  open_clip then falls back to the OpenAI mean/std (open_clip issue #1068); pass ``image_mean`` / ``image_std`` when
  the weights were trained with other statistics (a warning says so when the fallback is used).

Images are ``B x 3 x H x W`` tensors in [-1, 1] (the diffusion convention). ``encode_image`` resizes with
``F.interpolate(mode="bicubic", antialias=True)``: with ``antialias=True`` PyTorch uses the same separable
cubic kernel (a = -0.5) with the support widened by the downscale factor as PIL, which open_clip's own
preprocessing uses, so the two agree up to 8-bit rounding; it also makes a downscale average every input pixel
instead of sampling a sparse 4-tap grid, so guidance gradients reach all pixels and do not alias.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .checkpoints import CheckpointError, MissingCheckpointError

__all__ = ["ClipModel", "load_clip", "save_clip", "zero_shot", "encode_image", "encode_text", "CONFIG_FILE",
           "WEIGHTS_FILE", "OPENAI_MEAN", "OPENAI_STD"]

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

WEIGHTS_HINT = (
    "open_clip weights are downloaded by you on a machine with internet access (e.g. from the open_clip model "
    "zoo) and passed here as a local file path together with model_name, or as a directory holding "
    f"{CONFIG_FILE} and the weights; infd-solve never downloads anything."
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipModel:
    """A frozen open_clip model with what guidance needs to feed it differentiably.

    ``model``: the open_clip model (eval mode, ``requires_grad`` False); ``tokenizer``: its open_clip tokenizer;
    ``mean`` / ``std``: per-channel normalisation of [0, 1] images; ``size``: input side in pixels;
    ``name``: where it came from; ``resize_mode``: open_clip's ``"squash"``, ``"shortest"`` (resize the short
    side, centre crop) or ``"longest"`` (resize the long side, pad).
    """

    model: torch.nn.Module
    tokenizer: Callable
    mean: tuple
    std: tuple
    size: int
    name: str
    resize_mode: str = "squash"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device=None, dtype: torch.dtype | None = None) -> "ClipModel":
        """Move the model (in place, so every constraint sharing it follows) and return self."""
        self.model.to(device=device, dtype=dtype)
        return self

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """``len(prompts) x D`` unit-norm text features."""
        return encode_text(self, prompts)

    def check_prompt(self, prompt: str, name: str = "prompt") -> str:
        """``prompt`` if this CLIP can read it: valid text (``ValueError`` otherwise); a warning says what is
        kept when it is longer than the text context."""
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{name} is not valid text: {prompt[e.start:e.end]!r} at position {e.start} "
                             "(a lone surrogate?)") from None
        context = getattr(self.tokenizer, "context_length", None)
        encode = getattr(self.tokenizer, "encode", None)
        if context and callable(encode):
            tokens = encode(prompt)
            if len(tokens) + 2 > context:  # start and end tokens take two places
                kept = self.tokenizer.decode(tokens[: context - 2]) if hasattr(self.tokenizer, "decode") else "?"
                warnings.warn(f"{name} {prompt!r} is {len(tokens)} tokens; this CLIP reads {context - 2}, so it "
                              f"sees only {kept.strip()!r}", stacklevel=3)
        return prompt

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``B x D`` unit-norm image features of ``B x 3 x H x W`` images in [-1, 1]; differentiable."""
        return encode_image(self, images)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """:meth:`encode_image` of many images, ``batch`` at a time, without gradients (features for metrics)."""
        return torch.cat([self.encode_image(images[i : i + batch]) for i in range(0, len(images), batch)])

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> the normalised ``B x 3 x size x size`` input of the vision tower (differentiable)."""
        return preprocess(self, images)


def encode_text(clip: ClipModel, prompts: Sequence[str]) -> torch.Tensor:
    """Unit-norm text features (``len(prompts) x D``) of a list of prompts."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    tokens = clip.tokenizer(prompts).to(clip.device)
    return F.normalize(clip.model.encode_text(tokens), dim=-1)


def _resize(x: torch.Tensor, size: tuple) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)


def preprocess(clip: ClipModel, images: torch.Tensor) -> torch.Tensor:
    """Differentiable version of open_clip's inference preprocessing for [-1, 1] image tensors.

    Resize (bicubic, antialiased as PIL does) following ``clip.resize_mode``, map [-1, 1] -> [0, 1], normalise
    with ``clip.mean`` / ``clip.std``. Values are not clamped (PIL clamps bicubic overshoot to [0, 255]), so
    gradients also flow for predictions slightly outside [-1, 1]."""
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"expected a B x 3 x H x W image tensor in [-1, 1], got {shape}")
    # resizing in at least float32 (half-precision interpolation loses the antialiasing's accuracy)
    x = images.to(device=clip.device, dtype=torch.promote_types(images.dtype, torch.float32))
    s = clip.size
    h, w = x.shape[-2:]
    if clip.resize_mode == "squash":
        x = _resize(x, (s, s))
    elif clip.resize_mode == "shortest":  # torchvision Resize(int) + CenterCrop
        short, long = (h, w) if h <= w else (w, h)
        new_long = int(s * long / short)
        x = _resize(x, (s, new_long) if h <= w else (new_long, s))
        top, left = int(round((x.shape[-2] - s) / 2.0)), int(round((x.shape[-1] - s) / 2.0))
        x = x[..., top:top + s, left:left + s]
    elif clip.resize_mode == "longest":  # open_clip ResizeKeepRatio(longest=1) + CenterCropOrPad (fill 0 = black)
        ratio = max(h, w) / s
        x = _resize(x, (max(1, round(h / ratio)), max(1, round(w / ratio))))
        ph, pw = s - x.shape[-2], s - x.shape[-1]
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=-1.0)
    else:
        raise ValueError(f"unsupported resize_mode {clip.resize_mode!r}")
    mean = torch.tensor(clip.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(clip.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x + 1.0) * 0.5 - mean) / std


def encode_image(clip: ClipModel, images: torch.Tensor) -> torch.Tensor:
    """Unit-norm image features (``B x D``) of ``B x 3 x H x W`` images in [-1, 1], differentiable w.r.t. them."""
    x = preprocess(clip, images).to(clip.dtype)
    return F.normalize(clip.model.encode_image(x), dim=-1).to(images.dtype)


# ----------------------------------------------------------------------------- loading


@contextlib.contextmanager
def _offline():
    """Make Hugging Face Hub refuse network access while open_clip builds a model or tokenizer.

    ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` once at import, so the already-imported constant is patched too;
    both are restored afterwards. (Our own calls never pass hub names or pretrained tags; this guards the
    indirect paths, e.g. configs whose text tower or tokenizer is a Hugging Face model.)"""
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    saved_const = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved_const


def _triple(values, what: str) -> tuple:
    try:
        out = tuple(float(v) for v in values)
    except TypeError:
        out = (float(values),) * 3
    if len(out) == 1:
        out = out * 3
    if len(out) != 3:
        raise ValueError(f"{what} must be one or three numbers, got {values!r}")
    return out


def _square_size(size, source) -> int:
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise ValueError(f"{source}: non-square CLIP input size {size} is not supported")
        size = size[0]
    return int(size)


def _read_config(config_path: Path) -> dict:
    try:
        raw = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("model_cfg"), dict):
        raise CheckpointError(f"{config_path} is not an open_clip config: expected "
                              f"{{\"model_cfg\": {{...}}, \"preprocess_cfg\": {{...}}}}")
    text_cfg = raw["model_cfg"].get("text_cfg", {})
    if "hf_model_name" in text_cfg or "hf_tokenizer_name" in text_cfg:
        # Hugging Face text towers/tokenizers need their own files and would be fetched from the Hub.
        raise CheckpointError(
            f"{config_path}: text towers or tokenizers from Hugging Face (hf_model_name / hf_tokenizer_name) are "
            "not supported offline; use an open_clip text transformer with the built-in tokenizer")
    return raw


def _find_weights(directory: Path) -> Path:
    preferred = [directory / n for n in (WEIGHTS_FILE, "open_clip_pytorch_model.safetensors",
                                         "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth",
                                         "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")]
    for p in preferred:
        if p.is_file():
            return p
    found = sorted(p for ext in ("*.safetensors", "*.bin", "*.pth") for p in directory.glob(ext))
    if not found:
        raise MissingCheckpointError(
            f"{directory} holds {CONFIG_FILE} but no weights (expected {WEIGHTS_FILE}, or a .safetensors/.bin/.pth "
            f"file). {WEIGHTS_HINT}")
    return found[0]


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable safetensors file (corrupt or truncated?): "
                                f"{type(e).__name__}: {e}") from None


def _build(open_clip, model_name: str, pretrained: str | None, weights: Path, **kwargs):
    """Call open_clip offline; turn failures to read ``weights`` into a CheckpointError naming the file."""
    try:
        with _offline(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*QuickGELU.*")
            model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, **kwargs)
    except (FileNotFoundError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # safetensors / pickle / zip / state-dict mismatch errors all end up here
        from .checkpoints import error_detail, refuse_unsafe

        if weights.suffix.lower() != ".safetensors":
            refuse_unsafe(weights, e, "CLIP weights file")
        size = weights.stat().st_size if weights.is_file() else 0
        detail = "file is empty (0 bytes)" if size == 0 else f"{type(e).__name__}: {error_detail(e)}"
        raise CheckpointError(
            f"{weights}: cannot load open_clip weights for {model_name!r} (corrupt, truncated, or made for another "
            f"architecture?): {str(detail)[:600]}") from None
    return model


def load_clip(name_or_path: str | os.PathLike = "default", model_name: str | None = None,
              device: str | torch.device | None = None, *, image_mean: Sequence[float] | None = None,
              image_std: Sequence[float] | None = None) -> ClipModel:
    """Load a CLIP model offline, frozen and in eval mode.

    ``name_or_path``: ``"default"`` (the landscape CLIP shipped in ``infd_solve.pretrained``), a directory with
    ``open_clip_config.json`` + weights (open_clip ``local-dir:`` format; its ``preprocess_cfg`` gives
    mean/std/size), or a weights file, which needs ``model_name`` (an open_clip architecture such as
    ``"ViT-B-32"``, or a name registered with ``open_clip.add_model_config``). ``image_mean`` / ``image_std``
    override the normalisation (needed for a weights file trained with non-OpenAI statistics).
    """
    import open_clip

    path, name = _clip_path(name_or_path)
    force = {}
    if image_mean is not None:
        force["image_mean"] = _triple(image_mean, "image_mean")
    if image_std is not None:
        force["image_std"] = _triple(image_std, "image_std")
    if path.is_dir():
        model, tokenizer = _load_clip_dir(open_clip, path, model_name, force)
    else:
        model, tokenizer, force = _load_clip_file(open_clip, path, model_name, force)

    cfg = open_clip.get_model_preprocess_cfg(model)
    mean, std = _triple(cfg["mean"], "mean"), _triple(cfg["std"], "std")
    if not path.is_dir() and not force and all(abs(a - b) < 1e-6 for a, b in zip(mean + std, OPENAI_MEAN + OPENAI_STD)):
        warnings.warn(
            f"{path}: a weights file carries no preprocessing statistics, so open_clip falls back to the OpenAI "
            f"mean/std {OPENAI_MEAN} / {OPENAI_STD}. That is right for OpenAI-style weights; if these weights were "
            "trained with other statistics pass image_mean=/image_std=, or load a directory with "
            f"{CONFIG_FILE} (open_clip issue #1068).", stacklevel=2)
    model = model.eval().requires_grad_(False)
    if device is not None:
        model = model.to(device)
    return ClipModel(model=model, tokenizer=tokenizer, mean=mean, std=std, size=_square_size(cfg["size"], path),
                     name=name, resize_mode=str(cfg.get("resize_mode", "shortest")))


def _clip_path(name_or_path) -> tuple[Path, str]:
    """Where :func:`load_clip`'s ``name_or_path`` is (a shipped name or a local path; never a hub name), and
    how the model is named."""
    from . import pretrained

    if isinstance(name_or_path, str) and name_or_path in pretrained.NAMES:
        path = pretrained.clip_dir(name_or_path)
        name = f"{name_or_path} ({path})"
    else:
        if isinstance(name_or_path, str) and name_or_path.startswith(("hf-hub:", "local-dir:")):
            raise ValueError(
                f"{name_or_path!r}: pass a local directory or file path (hub names are not loaded; nothing is "
                "downloaded)")
        path = Path(name_or_path).expanduser()
        name = str(path)
    if not path.exists():
        raise MissingCheckpointError(f"no CLIP weights at {path}. {WEIGHTS_HINT}")
    return path, name


def _load_clip_dir(open_clip, path: Path, model_name: str | None, force: dict):
    """A CLIP directory (open_clip ``local-dir:``): the model and its tokenizer."""
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise MissingCheckpointError(
            f"{config_path} not found: a CLIP directory holds {CONFIG_FILE} ({{\"model_cfg\", \"preprocess_cfg\"}}) "
            f"and the weights ({WEIGHTS_FILE}). {WEIGHTS_HINT}")
    _read_config(config_path)
    weights = _find_weights(path)
    if weights.suffix == ".safetensors":
        _check_safetensors(weights)
    else:
        from .checkpoints import refuse_unsafe

        refuse_unsafe(weights, None, "CLIP weights")
    if model_name is not None:
        warnings.warn(f"model_name={model_name!r} is ignored: the architecture comes from {config_path}",
                      stacklevel=3)  # load_clip's caller
    spec = "local-dir:" + str(path.resolve())
    model = _build(open_clip, spec, None, weights, **force)
    with _offline():
        tokenizer = open_clip.get_tokenizer(spec)
    return model, tokenizer


def _load_clip_file(open_clip, path: Path, model_name: str | None, force: dict):
    """A CLIP weights file of the architecture ``model_name``: the model, its tokenizer and the statistics
    forced on it (``force``, else those of a sibling ``open_clip_config.json``)."""
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ValueError(f"{path}: expected a weights file ({', '.join(WEIGHT_SUFFIXES)}) or a directory")
    if not model_name:
        raise ValueError(
            f"{path} is a weights file: model_name is needed to know its architecture, e.g. "
            f"load_clip({str(path)!r}, model_name='ViT-B-32') (see open_clip.list_models(); a custom config can "
            "be registered with open_clip.add_model_config), or save the model as a directory with "
            f"{CONFIG_FILE}")
    if model_name.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(f"model_name must be an open_clip architecture name, got {model_name!r}")
    if open_clip.get_model_config(model_name.replace("/", "-")) is None:
        raise ValueError(f"unknown open_clip architecture model_name={model_name!r}; register a custom config "
                         "with open_clip.add_model_config(json_path) or pick one of open_clip.list_models()")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes)")
    if path.suffix.lower() == ".safetensors":  # cheap header check before building a possibly big model
        _check_safetensors(path)
    else:  # a pickle that references code is refused before open_clip touches it
        from .checkpoints import refuse_unsafe

        refuse_unsafe(path, None, "CLIP weights")
    force = _sibling_statistics(path, force)
    # An absolute path can never be mistaken for a pretrained tag (which open_clip would download).
    model = _build(open_clip, model_name, str(path.resolve()), path, **force)
    try:
        with _offline():
            tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as e:
        raise RuntimeError(f"the tokenizer of {model_name!r} is not available offline: {e}") from None
    return model, tokenizer, force


def _sibling_statistics(path: Path, force: dict) -> dict:
    """``force``, or when it sets neither statistic, the mean and std of a sibling open_clip_config.json (a
    local-dir export loaded by file), which carries the right ones."""
    sibling = path.parent / CONFIG_FILE
    if "image_mean" not in force and "image_std" not in force and sibling.is_file():
        try:
            pp = json.loads(sibling.read_text()).get("preprocess_cfg", {})
            if "mean" in pp and "std" in pp:
                force = {"image_mean": _triple(pp["mean"], "mean"), "image_std": _triple(pp["std"], "std")}
                log.info("using mean/std from %s", sibling)
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, ValueError):
            pass
    return force


def save_clip(model: torch.nn.Module, model_cfg: dict, preprocess_cfg: dict, directory: str | os.PathLike) -> Path:
    """Write an open_clip model as a directory :func:`load_clip` (and open_clip's ``local-dir:``) reads:
    ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``, its own statistics included) and the weights
    in float16 safetensors; each file atomically."""
    from safetensors.torch import save_file

    from .io import atomic_path

    directory = Path(directory)
    state = {k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()).contiguous()
             for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "producer": "infd-solve"})
    with atomic_path(directory / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2) + "\n")
    return directory


def zero_shot(clip: ClipModel, images: torch.Tensor, labels: torch.Tensor, prompts: Sequence[str],
              batch: int = 256) -> tuple[float, dict[int, dict]]:
    """Top-1 zero-shot accuracy of ``clip`` classifying ``images`` (``N x 3 x H x W`` in [-1, 1]) among
    ``prompts`` (class k is ``prompts[k]``) against ``labels``; and ``{k: {"n", "accuracy"}}`` per class."""
    with torch.no_grad():
        text = clip.encode_text(list(prompts))
        features = torch.cat([clip.encode_image(images[i : i + batch].to(clip.device))
                              for i in range(0, len(images), batch)])
    predicted = (features @ text.T).argmax(-1).cpu()
    labels = torch.as_tensor(labels).cpu()
    per_class = {k: {"n": int(m.sum()), "accuracy": float((predicted[m] == k).float().mean())}
                 for k in range(len(prompts)) if (m := labels == k).any()}
    return float((predicted == labels).float().mean()), per_class
