"""The `full` regime's data pipeline and device paths: batches decoded/augmented in DataLoader worker processes are
the in-process batches (so training is identical), CPU stays float32 / default layout, and (`gpu`, skipped without
CUDA) one full-regime cell on CUDA (bf16 autocast, channels_last, workers, pinned memory) agrees with CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oodml.data.base import ImageDataset
from oodml.methods import ImageInputs, MethodContext, build_method, make_inputs
from oodml.methods.nets import EmbeddingNet, amp_dtype, default_loader_workers, make_head
from tests.methods.test_full_regime import images  # noqa: F401  (fixture: 6 classes x 8 tiny images)

pytestmark = pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")

TINY = {"iterations": 3, "adapt_iterations": 2, "batch_size": 8, "embed_dim": 8, "ways": 3, "shots": 1,
        "queries": 1, "dmml_models": 2}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _inputs(ds: ImageDataset, rows: np.ndarray, workers: int) -> ImageInputs:
    x = make_inputs("full", features=None, rows=rows, dataset=ds, backbone="conv4", loader_workers=workers)
    assert isinstance(x, ImageInputs) and x.loader_workers == workers
    return x


def _cell(spec: str, ds: ImageDataset, workers: int, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """fit on classes 0-2, adapt on 3 images of each of classes 3-5, embed classes 3-5: (embeddings, labels)."""
    src = np.flatnonzero(ds.labels < 3)
    sup = np.concatenate([np.flatnonzero(ds.labels == c)[:3] for c in range(3, 6)])
    tgt = np.flatnonzero(ds.labels >= 3)
    m = build_method(spec, MethodContext(regime="full", backbone="conv4", seed=0, device=device), TINY)
    inputs = [_inputs(ds, src, workers), _inputs(ds, sup, workers), _inputs(ds, tgt, workers)]
    m.fit(inputs[0], ds.labels[src])
    a = m.adapt(inputs[1], ds.labels[sup])
    out = a.embed(inputs[2])
    used = [inputs[0], *([inputs[1]] if m.info.uses_support else []), inputs[2]]
    assert all((x.prefetched > 0) == (workers > 0) for x in used)  # every stage's batches came from the workers
    return out, ds.labels[tgt]


@pytest.mark.parametrize("spec", ["adapted_proto", "triplet+dmml"])
def test_worker_processes_train_exactly_as_in_process(spec: str, images: ImageDataset) -> None:
    in_process, _ = _cell(spec, images, workers=0)
    with_workers, _ = _cell(spec, images, workers=2)
    np.testing.assert_array_equal(in_process, with_workers)


def test_prefetched_batches_equal_computed_ones_and_others_are_computed(images: ImageDataset) -> None:
    x = _inputs(images, np.arange(len(images)), workers=2)
    plan = [(np.arange(i, i + 4), True, i % 2) for i in range(0, 20, 4)]
    x.prefetch(iter(plan))
    first = x.fetch(plan[0][0], train=True, view=0)
    assert torch.equal(first, x.compute(plan[0][0], train=True, view=0))
    off_plan = x.fetch(np.array([7, 3]), train=False)  # not announced: computed here, the stream waits
    assert torch.equal(off_plan, x.compute(np.array([7, 3])))
    for idx, train, view in plan[1:]:
        assert torch.equal(x.fetch(idx, train=train, view=view), x.compute(idx, train=train, view=view))
    assert x.prefetched == len(plan)
    x.prefetch([(np.arange(3), False, 0), (np.arange(2), False, 0)])  # replaces what is left of the old plan
    x.prefetch([(np.arange(5), False, 0)], replace=False)  # the running plan stays (an evaluation mid-training)
    assert torch.equal(x.fetch(np.arange(5)), x.compute(np.arange(5)))
    assert torch.equal(x.fetch(np.arange(3)), x.compute(np.arange(3)))
    assert x.prefetched == len(plan) + 1


def test_cpu_defaults_are_unchanged(images: ImageDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_loader_workers() == 0 and amp_dtype(torch.device("cpu")) is None
    x = make_inputs("full", features=None, rows=np.arange(4), dataset=images, backbone="conv4")
    assert isinstance(x, ImageInputs) and x.loader_workers == 0 and not x.pin_memory
    net = EmbeddingNet(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()), make_head(4 * 26 * 26, 5))
    x28 = torch.randn(2, 3, 28, 28)
    out = net(x28)
    assert out.dtype == torch.float32 and net.trunk[0].weight.is_contiguous()  # no channels_last on CPU
    torch.testing.assert_close(out, net.head(net.trunk(x28)), rtol=0, atol=0)


@pytest.mark.gpu
@cuda
def test_gpu_defaults_use_workers_bf16_and_channels_last() -> None:
    dev = torch.device("cuda")
    assert default_loader_workers() >= 0
    if torch.cuda.is_bf16_supported():
        assert amp_dtype(dev) == torch.bfloat16
    net = EmbeddingNet(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()),
                       make_head(4 * 26 * 26, 5)).to(dev)
    out = net(torch.randn(2, 3, 28, 28, device=dev))
    assert out.dtype == torch.float32 and net.trunk[0].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("spec", ["adapted_proto", "multisimilarity"])
def test_full_regime_cell_on_cuda_agrees_with_cpu(spec: str, images: ImageDataset) -> None:
    """Same cell on CPU (float32) and CUDA (bf16 autocast, TF32, workers): embeddings point the same way and the
    nearest-class-mean accuracy of the target images agrees."""
    cpu, labels = _cell(spec, images, workers=0)
    gpu, _ = _cell(spec, images, workers=2, device="cuda")
    assert gpu.shape == cpu.shape and np.isfinite(gpu).all()
    cos = (cpu * gpu).sum(1) / np.linalg.norm(cpu, axis=1) / np.linalg.norm(gpu, axis=1)
    assert cos.min() >= 0.98, cos.min()

    def accuracy(e: np.ndarray) -> float:
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        classes = np.unique(labels)
        means = np.stack([e[labels == c].mean(0) for c in classes])
        return float((classes[(e @ means.T).argmax(1)] == labels).mean())

    assert abs(accuracy(cpu) - accuracy(gpu)) <= 0.1  # at most 3 of the 30 target images


@pytest.mark.gpu
@cuda
def test_gpu_augmentation_on_cuda_equals_the_cpu_tensors() -> None:
    """`oodml/features/gpu.py` on CUDA: the same boxes and flips (from the same Generator) give the CPU values."""
    from oodml.features.gpu import random_resized_crop_flip

    x = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8)
    mean, std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    cpu = random_resized_crop_flip(x, 48, np.random.default_rng(0), mean, std)
    gpu = random_resized_crop_flip(x.cuda(), 48, np.random.default_rng(0), mean, std)
    assert gpu.device.type == "cuda" and gpu.shape == (6, 3, 48, 48)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)
