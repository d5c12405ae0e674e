"""One contract test over every registered method and add-ons (GUIDE §6), head regime on blob data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oodml.methods import METHODS, EmbeddingMethod, Method, MethodContext, build_method, make_inputs
from tests.conftest import make_blobs

pytestmark = pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")

#: tiny iteration counts: the whole module must stay fast on 2 cores
TINY = {"iterations": 6, "adapt_iterations": 4, "batch_size": 12, "embed_dim": 16, "hidden_dim": 16, "ways": 4,
        "shots": 2, "queries": 2, "dmml_models": 2}
ADDON_SPECS = ["triplet+sec", "adapted_proto+sec", "weight_transfer+sec", "margin+dmml",
               "adapted_multisimilarity+dmml", "protonet+sec+dmml"]
SPECS = METHODS.names() + ADDON_SPECS


@pytest.fixture(scope="module")
def data() -> tuple:
    fs = make_blobs(n_classes=12, per_class=6, dim=8, seed=3, spread=1.0)  # overlapping: losses stay > 0
    src = np.flatnonzero(fs.labels < 6)
    tgt = np.flatnonzero(fs.labels >= 6)
    # a 2-shot support of the target classes
    sup = np.concatenate([np.flatnonzero(fs.labels == c)[:2] for c in range(6, 12)])
    return fs, src, tgt, sup


def _build(spec: str, seed: int = 0, **extra: object) -> Method:
    return build_method(spec, MethodContext(seed=seed, in_dim=8), {**TINY, **extra})


def _run(spec: str, data: tuple, seed: int = 0, **extra: object) -> tuple[Method, Method, dict]:
    fs, src, tgt, sup = data
    m = _build(spec, seed, **extra)
    m.fit(make_inputs("head", features=fs, rows=src), fs.labels[src])
    a = m.adapt(make_inputs("head", features=fs, rows=sup), fs.labels[sup])
    return m, a, a.embed_variants(make_inputs("head", features=fs, rows=tgt))


def _same_state(s1: dict, s2: dict) -> bool:
    if s1.keys() != s2.keys():
        return False
    for k in s1:
        a, b = s1[k], s2[k]
        if isinstance(a, dict):
            if not _same_state(a, b):
                return False
        elif isinstance(a, list):
            if len(a) != len(b) or not all(_same_state(x, y) for x, y in zip(a, b)):
                return False
        elif isinstance(a, torch.Tensor):
            if not torch.equal(a, b):
                return False
        elif a != b:
            return False
    return True


@pytest.mark.parametrize("spec", SPECS)
def test_method_contract(spec: str, data: tuple) -> None:
    fs, src, tgt, sup = data
    m, a, variants = _run(spec, data)
    info = m.info
    # finite (N, d) float32 embeddings, for every variant
    assert "" in variants
    if "+dmml" in spec:
        assert set(variants) == {"", "ensemble"}
        assert np.allclose(np.linalg.norm(variants["ensemble"], axis=1), 1, atol=1e-5)
    for emb in variants.values():
        assert emb.dtype == np.float32 and emb.ndim == 2 and emb.shape[0] == len(tgt)
        assert np.isfinite(emb).all()
    # same seed -> identical outputs; another seed -> different ones (for trained methods)
    _, _, again = _run(spec, data)
    for k in variants:
        np.testing.assert_array_equal(variants[k], again[k])
    if info.trains:
        _, _, other = _run(spec, data, seed=1)
        assert not np.array_equal(variants[""], other[""])
    # adapt leaves the source state untouched
    before = m.state_dict()
    emb_src = m.embed(make_inputs("head", features=fs, rows=tgt))
    a2 = m.adapt(make_inputs("head", features=fs, rows=sup), fs.labels[sup])
    assert a2 is not m
    assert _same_state(before, m.state_dict())
    np.testing.assert_array_equal(emb_src, m.embed(make_inputs("head", features=fs, rows=tgt)))
    if info.uses_support:  # ... and adaptation changed the adapted copy
        assert not np.array_equal(emb_src, variants[""])
    else:
        np.testing.assert_array_equal(emb_src, variants[""])
    # every trainable parameter gets a gradient, at fit and at adaptation
    if isinstance(m, EmbeddingMethod):
        assert m.grad_probe(make_inputs("head", features=fs, rows=src), fs.labels[src], "fit") == []
        if info.uses_support:
            assert isinstance(a, EmbeddingMethod)
            assert a.grad_probe(make_inputs("head", features=fs, rows=sup), fs.labels[sup], "adapt") == []


@pytest.mark.parametrize("spec", ["margin", "adapted_proto+dmml", "weight_transfer", "pretrained"])
def test_state_dict_roundtrip(spec: str, data: tuple) -> None:
    """The runner caches the fitted source state; a fresh method loaded from it embeds and adapts identically."""
    fs, src, tgt, sup = data
    m = _build(spec)
    m.fit(make_inputs("head", features=fs, rows=src), fs.labels[src])
    state = m.state_dict()
    fresh = _build(spec)
    fresh.load_state_dict(state)
    xt = make_inputs("head", features=fs, rows=tgt)
    xs = make_inputs("head", features=fs, rows=sup)
    for k, v in m.embed_variants(xt).items():
        np.testing.assert_array_equal(v, fresh.embed_variants(xt)[k])
    np.testing.assert_array_equal(m.adapt(xs, fs.labels[sup]).embed(xt), fresh.adapt(xs, fs.labels[sup]).embed(xt))


@pytest.mark.parametrize("extra", [{"head": "mlp"}, {"adapt_scope": "all"}, {"head": "mlp", "adapt_scope": "last"}])
def test_head_options(extra: dict, data: tuple) -> None:
    """The mlp head and both adaptation scopes train; `last` only changes the head's last layer."""
    fs, src, tgt, sup = data
    m, a, variants = _run("adapted_triplet", data, **extra)
    assert isinstance(m, EmbeddingMethod) and isinstance(a, EmbeddingMethod)
    assert np.isfinite(variants[""]).all()
    changed = {n for (n, p), q in zip(m.nets[0].named_parameters(), a.nets[0].parameters()) if not torch.equal(p, q)}
    n_layers = len(m.nets[0].head)
    if extra.get("adapt_scope", "last") == "last":
        assert changed == {f"head.{n_layers - 1}.weight", f"head.{n_layers - 1}.bias"}
    else:
        assert changed == {n for n, _ in m.nets[0].named_parameters()}


def test_global_rng_untouched(data: tuple) -> None:
    """Methods draw from their own seeded generators: the global torch/numpy RNG states don't move."""
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    _run("margin+dmml", data)
    assert torch.equal(torch_state, torch.get_rng_state())
    assert np.random.get_state()[1].tolist() == np_state[1].tolist()


def test_dmml_models_differ(data: tuple) -> None:
    """Cohort members are diverse (different init seeds and views), so the ensemble is not a copy of model 1."""
    fs, src, tgt, sup = data
    m = _build("margin+dmml")
    m.fit(make_inputs("head", features=fs, rows=src), fs.labels[src])
    assert isinstance(m, EmbeddingMethod) and m.n_models == 2
    xt = make_inputs("head", features=fs, rows=tgt)
    assert not np.allclose(m._embed_net(0, xt), m._embed_net(1, xt))


@pytest.mark.parametrize("plain, adapted", [("margin", "adapted_margin"), ("protonet", "adapted_proto"),
                                            ("histogram+sec", "adapted_hist+sec")])
def test_adapted_variant_fits_the_same_source_model(plain: str, adapted: str, data: tuple) -> None:
    """`adapted_X` = X's source model + fine-tuning, so the gain of adaptation is measured against the same model."""
    fs, src, tgt, sup = data
    xt = make_inputs("head", features=fs, rows=tgt)
    embs = []
    for spec in (plain, adapted):
        m = _build(spec)
        m.fit(make_inputs("head", features=fs, rows=src), fs.labels[src])
        embs.append(m.embed(xt))
    np.testing.assert_array_equal(embs[0], embs[1])
