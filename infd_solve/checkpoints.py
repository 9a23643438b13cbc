"""Reading PyTorch checkpoint files safely, with errors that say what is wrong with the file.

Every ``.pth`` / ``.pt`` / ``.bin`` file is read with ``torch.load(weights_only=True)``: tensors and plain
containers only, nothing executed. A file whose pickle references any other Python object (it could run
code) raises :class:`UnsafeCheckpointError` naming it, whichever way the unpickler stopped; no message here
ever suggests turning the safe loader off.
"""

from __future__ import annotations

import pickletools
import warnings
import zipfile
from pathlib import Path


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint (missing, empty, corrupt, foreign or mismatched)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle would construct arbitrary Python objects (it could run code)."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """A checkpoint file or model directory that is not there: bad input like any other :class:`CheckpointError`,
    and a ``FileNotFoundError`` too, as for any missing file."""


def with_article(noun: str) -> str:
    """``a checkpoint``, ``an official INFD checkpoint``."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


# What torch's weights-only unpickler builds tensors and containers from; anything else is code.
SAFE_PREFIXES = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset", "builtins.slice",
                 "builtins.bytearray", "builtins.complex")


def pickle_globals(data: bytes) -> list[str]:
    """The ``module.name`` of every global a pickle stream references, found without unpickling it."""
    found, strings = [], []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str) and "UNICODE" in opcode.name:
                strings.append(arg)
    except Exception:  # noqa: BLE001 - a truncated or foreign stream: keep what was found before it
        pass
    return found


def _pickles(path: Path) -> list[bytes]:
    """The pickle streams of a file: the ``data.pkl`` of a zip checkpoint, or the file itself."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return [archive.read(n) for n in archive.namelist() if n.endswith(".pkl")]
    return [path.read_bytes()]


def unsafe_globals(path: Path) -> list[str]:
    """Globals referenced by the file's pickles that are not tensor or container types."""
    try:
        streams = _pickles(path)
    except (OSError, zipfile.BadZipFile, KeyError):
        return []
    return [g for s in streams for g in pickle_globals(s) if not g.startswith(SAFE_PREFIXES)]


def error_detail(error: Exception) -> str:
    """The informative line of torch's message, without its advice to disable the safe loader."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    keep = [ln for ln in lines if "weights_only" not in ln and "Weights only load failed" not in ln
            and "trusted source" not in ln and not ln.startswith("Check the documentation")]
    return (keep or [type(error).__name__])[0][:300]


def refuse_unsafe(path: Path, error: Exception | None = None, what: str = "checkpoint") -> None:
    """Raise :class:`UnsafeCheckpointError` if the file references Python code (found by scanning its
    pickles, or named by ``error``); return otherwise."""
    names = unsafe_globals(path)
    message = str(error) if error is not None else ""
    if not names and "GLOBAL" in message:  # torch named it: "unsupported GLOBAL posix.system whose module ..."
        names = [message.split("GLOBAL", 1)[1].split()[0]]
    if not names and "Unsupported global" in message:
        names = [message.split("Unsupported global:", 1)[-1].split()[0]]
    if names:
        shown = ", ".join(sorted(set(names))[:5])
        raise UnsafeCheckpointError(
            f"refusing to load {path}: its pickle references Python code ({shown}), which it could run; "
            f"{with_article(what)} file holds only tensors and plain containers. Nothing from the file was "
            "executed.") from None


def load_torch_file(path: str | Path, what: str = "checkpoint"):
    """``torch.load(path, map_location="cpu", weights_only=True)``; :class:`UnsafeCheckpointError` for a file
    that references code, :class:`CheckpointError` (naming the file) for anything else unreadable."""
    import torch

    path = Path(path)
    if not path.exists():
        raise MissingCheckpointError(f"{what} not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not {with_article(what)} file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():  # torch's note on old pickle protocols: the error below says more
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - zip, pickle, storage and format errors all end up here
        refuse_unsafe(path, e, what)
        with open(path, "rb") as f:  # a zip (torch's format), even one cut short, starts with a local header
            zipped = f.read(4) == b"PK\x03\x04"
        kind = "truncated or corrupt PyTorch checkpoint" if zipped else "not a PyTorch checkpoint"
        raise CheckpointError(f"cannot read {path}: {kind} ({type(e).__name__}: {error_detail(e)})") from None


def _list(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_checked_state_dict(model, state: dict, source, unexpected=()) -> None:
    """Load ``state`` into ``model`` (a ``torch.nn.Module``) strictly; on any mismatch raise
    :class:`CheckpointError` listing what is wrong."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = list(unexpected) + [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing keys: {_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_list(unexpected)}")
    if wrong:
        problems.append(f"shape mismatches (file != model): {_list(wrong, 6)}")
    if problems:
        raise CheckpointError(f"{source}: weights do not match the model config; " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
