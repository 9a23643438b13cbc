"""Device and dtype: the model decides, everything else follows it (constraints, CLIP, LPIPS).

Every built-in constraint passes one contract on CPU float32, CPU float64 and CUDA where present: after
``.to(device, dtype)`` its loss on a patch of that device and dtype has shape [B], that dtype and device, is
finite and >= 0, and has a finite gradient; then a whole solve runs on a model moved there, with constraints
built on the CPU.
"""

import pytest
import torch
import torchvision

import infd_solve
from infd_solve import constraints as builtin
from infd_solve.constraints import (BlurObservation, ClipBox, ColorMatch, LowResObservation, MaskedObservation,
                                   PerceptualMatch)
from infd_solve.losses import load_lpips

from .helpers import make_tiny_clip, tiny_model


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    # a CLIP of this module's own: the solver moves it in place, which must not leak into other modules
    return make_tiny_clip(tmp_path_factory.mktemp("device_clip"))


@pytest.fixture(scope="module")
def lpips_alex(tmp_path_factory):
    torch.manual_seed(0)
    features = torchvision.models.alexnet().features  # random weights stand in for the ImageNet file
    path = tmp_path_factory.mktemp("lpips") / "alexnet-owt-7be5be79.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INFD_LPIPS_BACKBONE", str(path))
        return load_lpips("alex")


def _image(h, w, seed=0):
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# One way to build each built-in constraint; the first test makes sure a new one cannot be forgotten here.
FACTORIES = {
    "BlurObservation": lambda clip, lpips: BlurObservation(_image(16, 16), {"type": "motion", "size": 5, "length": 3},
                                                           noise_sigma=0.01, max_side=8),  # a rebinned kernel
    "ClipBox": lambda clip, lpips: ClipBox("clouds", (0.1, 0.0, 0.9, 0.4), clip=clip, negative_prompts=["fog"]),
    "ColorMatch": lambda clip, lpips: ColorMatch("#336699", polygon=[(0.1, 0.1), (0.9, 0.2), (0.5, 0.9)]),
    "LowResObservation": lambda clip, lpips: LowResObservation(_image(8, 8), noise_sigma=0.01, factor=2),
    "MaskedObservation": lambda clip, lpips: MaskedObservation(_image(16, 16), mask=[(0.5, 0.5), (1, 0.5), (0.5, 1)],
                                                               box=(0.5, 0.5, 1.0, 1.0)),
    "PerceptualMatch": lambda clip, lpips: PerceptualMatch(_image(32, 32), box=(0, 0, 0.5, 0.5), metric=lpips),
}


def test_every_builtin_constraint_is_covered():
    shipped = {cls.__name__ for cls in builtin.REGISTRY.values() if cls.__module__.startswith("infd_solve.")}
    assert set(FACTORIES) == shipped


def _tensors(obj):
    for value in vars(obj).values():
        if torch.is_tensor(value):
            yield value
        elif isinstance(value, torch.nn.Module):
            yield from value.parameters()
            yield from value.buffers()
        elif hasattr(value, "model") and isinstance(value.model, torch.nn.Module):  # a ClipModel
            yield from value.model.parameters()


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_constraint_contract(kind, device_dtype, clip, lpips_alex):
    device, dtype = device_dtype
    c = FACTORIES[kind](clip, lpips_alex)
    assert c.to(device, dtype) is c
    for t in _tensors(c):  # everything it holds followed .to()
        assert t.device.type == device.type
        assert t.dtype == dtype or not t.is_floating_point()
    patch = (torch.rand(3, 3, *c.size, device=device, dtype=dtype) * 2 - 1).requires_grad_(True)
    loss = c.loss(patch)
    assert loss.shape == (3,) and loss.dtype == dtype and loss.device.type == device.type
    assert torch.isfinite(loss).all() and (loss >= 0).all()
    (grad,) = torch.autograd.grad(loss.sum(), patch)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    scored = torch.rand(3, 3, *c.score_size, device=device, dtype=dtype) * 2 - 1  # scores use their own grid
    for name, value in c.score(scored).items():
        assert value.shape == (3,) and value.device.type == device.type and torch.isfinite(value).all(), name
    c.to("cpu", torch.float32)  # and back: shared modules (CLIP, LPIPS) return to where other tests expect them


def test_solve_follows_the_model(device_dtype, clip):
    device, dtype = device_dtype
    model = tiny_model(normalize=False, seed=4).to(device, dtype)
    observed = _image(16, 16, seed=1)
    constraints = [ClipBox("a lake", (0.0, 0.5, 1.0, 1.0), clip=clip),  # built on the CPU in float32
                   MaskedObservation(observed, mask=torch.ones(16, 16), box=(0, 0, 0.5, 0.5)),
                   LowResObservation(_image(4, 4, seed=2), factor=4)]
    result = infd_solve.Solver(model, steps=4, refine_steps=2, progress=False).solve(constraints, seed=0)
    assert result.field.device.type == device.type and result.field.dtype == dtype
    assert clip.device.type == device.type and clip.dtype == dtype  # the shared CLIP followed, in place
    for name, values in result.history["loss"].items():  # history is brought to the host once, at the end
        assert all(v is None or (v.device.type == "cpu" and torch.isfinite(v).all()) for v in values), name
    report = result.report()
    assert set(report) == {c.name for c in constraints}
    assert 0 < report["observation"]["psnr"][0] < 100 and 0 < report["low-res"]["psnr"][0] < 100
    assert -1 <= report["clip:a lake"]["similarity"][0] <= 1
    clip.to("cpu", torch.float32)
