"""Memory: what a device has available, and the peak memory of a block of code on CPU (peak RSS) or CUDA; and
models with real architectures and random weights, for timing without any download."""

from __future__ import annotations

import ctypes
import gc
import json
import re
import threading
from pathlib import Path

import torch

MB = 2**20


def _proc_status_kb(field: str, path: str = "/proc/self/status") -> int | None:
    """A ``field: N kB`` line of a /proc file, in bytes (None where there is no such file or line)."""
    try:
        with open(path) as f:
            m = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.MULTILINE)
        return int(m.group(1)) * 1024 if m else None
    except OSError:
        return None


def _reset_hwm() -> bool:
    """Reset the process's peak RSS (VmHWM) to the current RSS; True if that worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    hwm, rss = _proc_status_kb("VmHWM"), _proc_status_kb("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + 4 * MB


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _malloc_trim() -> None:
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def use_mmap_for_tensors(threshold: int = 128 * 1024) -> bool:
    """Fix glibc's mmap threshold (M_MMAP_THRESHOLD = -3) so every tensor-sized block is mmapped and unmapped on
    free. By default glibc raises the threshold after each large free, after which freed activations stay in the
    heap, and RSS measures allocator slack (it grew with the image size here) instead of live memory."""
    libc = _libc()
    return bool(libc is not None and hasattr(libc, "mallopt") and libc.mallopt(-3, threshold) == 1)


def synchronize(device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; timings must include it)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Context manager: ``.peak`` = peak memory growth (bytes) during the block, on ``device``."""

    def __init__(self, device: torch.device, interval: float = 0.005):
        self.device, self.interval = device, interval
        self.peak = 0
        self.method = ""

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = _proc_status_kb("VmRSS")
            if rss is not None:
                self._max_rss = max(self._max_rss, rss)

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return self
        _malloc_trim()
        self._base = self._max_rss = _proc_status_kb("VmRSS") or 0
        self._hwm = _reset_hwm()
        self.method = ("peak RSS: VmHWM reset via /proc/self/clear_refs + VmRSS sampled every "
                       f"{self.interval * 1000:.0f} ms" if self._hwm else
                       f"peak RSS: VmRSS sampled every {self.interval * 1000:.0f} ms (VmHWM reset unavailable)")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
            return False
        self._stop.set()
        self._thread.join()
        peak = max(self._max_rss, _proc_status_kb("VmRSS") or 0)
        if self._hwm:
            peak = max(peak, _proc_status_kb("VmHWM") or 0)
        self.peak = max(0, peak - self._base)
        return False


def available_memory(device) -> int | None:
    """Bytes that can still be allocated on ``device`` (CUDA: free memory; CPU: the kernel's MemAvailable),
    or None where that cannot be known."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        return _proc_status_kb("MemAvailable", "/proc/meminfo")
    return None


def small_random_model(normalize: bool = True, seed: int = 0):
    """A small random autoencoder + renderer (latent 3x8x8, field 32 x 32 x 32, renderer 32 hidden channels)."""
    from .models.infd import INFDConfig, INFDModel

    stack = {"ch": 32, "ch_mult": [1, 2, 1], "num_res_blocks": 1, "resolution": 32, "z_channels": 3}
    config = INFDConfig(z_shape=(3, 8, 8), encoder=stack, decoder=stack, n_embed=64,
                        renderer={"feature_channels": 32, "hidden_channels": 32, "normalize": normalize}, unet=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return INFDModel(config).eval()


def official_architecture(key_list):
    """An INFD model with the architecture of an official checkpoint, from its key list's ``args`` header
    (``tests/fixtures/ffhq_keys.txt``: the real FFHQ model, 274M-parameter denoiser). Random weights: for
    timing only."""
    from .models.infd import INFDModel
    from .models.official import config_from_official

    header = [line[3:] for line in Path(key_list).read_text().splitlines() if line.startswith("#   ")]
    config = config_from_official({"name": "infd", "args": json.loads("\n".join(header))}, key_list)
    with torch.random.fork_rng(devices=[]):  # the same weights every time, the caller's RNG untouched
        torch.manual_seed(0)
        return INFDModel(config).eval().requires_grad_(False)


def random_clip(name: str, device):
    """An open_clip architecture with random weights (nothing is downloaded): for timing only."""
    import open_clip

    from .clip import OPENAI_MEAN, OPENAI_STD, ClipModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model(name, pretrained=None).eval().requires_grad_(False).to(device)
    size = open_clip.get_model_preprocess_cfg(model)["size"]
    return ClipModel(model, open_clip.get_tokenizer(name), OPENAI_MEAN, OPENAI_STD,
                     size[0] if isinstance(size, (list, tuple)) else size, f"random {name}")
