"""The decisive CUB-200 study's method pieces: `adapted_<loss>` under ooDML's few-shot protocol for every registered
adapted method, the DMML no-mutual control `+dmmlctl`, the `select_metric` selection score and SEC's eta."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from oodml.config import build_run_cfg
from oodml.errors import OodmlError
from oodml.eval import knn
from oodml.eval.metrics import map_at_k_per_query
from oodml.methods import (METHODS, EmbeddingMethod, Method, MethodContext, build_method, canonical_spec, make_inputs,
                           method_params, resolve_methods, resolve_params)
from oodml.methods.addons import SecTerm
from tests.conftest import make_blobs

pytestmark = pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")

TINY = {"iterations": 6, "batch_size": 12, "embed_dim": 8, "ways": 4, "shots": 2, "queries": 2, "dmml_models": 3}


@pytest.fixture(scope="module")
def data() -> tuple:
    fs = make_blobs(n_classes=12, per_class=6, dim=8, seed=3, spread=1.0)
    src = np.flatnonzero(fs.labels < 6)
    tgt = np.flatnonzero(fs.labels >= 6)
    sup = np.concatenate([np.flatnonzero(fs.labels == c)[:2] for c in range(6, 12)])
    return fs, src, tgt, sup


def _fit(spec: str, data: tuple, **extra: Any) -> Method:
    fs, src, _, _ = data
    m = build_method(spec, MethodContext(seed=0, in_dim=8), {**TINY, **extra})
    m.fit(make_inputs("head", features=fs, rows=src), fs.labels[src])
    return m


def _state_bytes(m: Method) -> list[bytes]:
    def flat(obj: Any) -> list[bytes]:
        if isinstance(obj, dict):
            return [b for k in sorted(obj) for b in flat(obj[k])]
        if isinstance(obj, list):
            return [b for x in obj for b in flat(x)]
        return [obj.numpy().tobytes()] if isinstance(obj, torch.Tensor) else [repr(obj).encode()]

    return flat(m.state_dict())


ADAPTED = [n for n in METHODS.list("adapted_*") if METHODS.info(n).uses_support]


@pytest.mark.parametrize("spec", ADAPTED)
def test_every_adapted_method_adapts_under_the_oodml_protocol(spec: str, data: tuple) -> None:
    """Every registered `adapted_<loss>` takes ooDML's few-shot protocol: only the head's last layer moves."""
    fs, _, tgt, sup = data
    m = _fit(spec, data, adapt_protocol="oodml", adapt_iterations=4)
    assert isinstance(m, EmbeddingMethod) and METHODS.info(spec).fits_as in METHODS.names()
    a = m.adapt(make_inputs("head", features=fs, rows=sup), fs.labels[sup])
    assert isinstance(a, EmbeddingMethod)
    xt = make_inputs("head", features=fs, rows=tgt)
    emb = a.embed(xt)
    assert np.isfinite(emb).all() and not np.array_equal(emb, m.embed(xt))
    last = str(len(m.nets[0].head) - 1)
    for (name, w), w0 in zip(a.nets[0].head.named_parameters(), m.nets[0].head.parameters(), strict=True):
        assert torch.equal(w, w0) == (not name.startswith(last)), name
    assert a.adaptation_record(2)["protocol"] == "oodml"


def test_adapted_multisimilarity_fits_as_multisimilarity(data: tuple) -> None:
    """ooDML's headline few-shot model: the multisimilarity source model, adapted; its fit is the plain one's."""
    fs, _, tgt, _ = data
    xt = make_inputs("head", features=fs, rows=tgt)
    plain, adapted = _fit("multisimilarity", data), _fit("adapted_multisimilarity", data, adapt_protocol="oodml")
    np.testing.assert_array_equal(plain.embed(xt), adapted.embed(xt))


def test_dmml_control_equals_dmml_without_the_mutual_term_bit_for_bit(data: tuple) -> None:
    fs, _, tgt, _ = data
    xt = make_inputs("head", features=fs, rows=tgt)
    ctl = _fit("margin+dmmlctl", data)
    zero = _fit("margin+dmml", data, dmml_weight=0.0)
    mutual = _fit("margin+dmml", data)
    ens = _fit("margin+ens", data, ens_models=3)
    assert _state_bytes(ctl) == _state_bytes(zero)
    got = ctl.embed_variants(xt)
    assert set(got) == {"", "ensemble"}
    for k, v in zero.embed_variants(xt).items():
        assert got[k].tobytes() == v.tobytes()
    # the mutual term changes the models; +ens lacks the views, noise and schedule, so it differs too
    assert not np.array_equal(got["ensemble"], mutual.embed_variants(xt)["ensemble"])
    assert not np.array_equal(got["ensemble"], ens.embed_variants(xt)["ensemble"])
    assert isinstance(ctl, EmbeddingMethod) and ctl.n_models == 3


def test_dmml_term_computes_each_distance_matrix_once_and_trains_bit_for_bit_as_the_plain_loss(
        data: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cohort's mutual term reuses each model's distance values within a batch (5 matrices per step for 3
    models instead of 9) and still trains exactly as `relational_mutual_loss` per model does."""
    from oodml.methods import cohort, losses

    calls = []
    real = losses.pairwise_distances

    def counted(e: torch.Tensor) -> torch.Tensor:
        calls.append(e.shape)
        return real(e)

    monkeypatch.setattr(cohort, "pairwise_distances", counted)
    cached = _fit("margin+dmml", data, iterations=3)
    assert len(calls) == 3 * 5

    def plain(self: cohort.MutualTerm, m: int, outs: Any) -> torch.Tensor | None:
        others = [o[1].detach() for n, o in enumerate(outs) if n != m]
        return self.weight * losses.relational_mutual_loss(outs[m][1], others)

    monkeypatch.setattr(cohort.MutualTerm, "term", plain)
    assert _state_bytes(_fit("margin+dmml", data, iterations=3)) == _state_bytes(cached)


def test_dmml_control_name_params_and_alias() -> None:
    from oodml.cli import _registry_listing

    assert canonical_spec("margin+dmml_nomutual") == "margin+dmmlctl"
    assert ("+dmml_nomutual", "alias of +dmmlctl") in _registry_listing("methods")
    assert resolve_methods("margin+dmml,margin+dmml_nomutual,margin+dmmlctl") == ["margin+dmml", "margin+dmmlctl"]
    ctl = method_params("margin+dmmlctl", {"dmml_models": 4, "dmml_noise": 0.2})
    dmml = method_params("margin+dmml", {"dmml_models": 4, "dmml_noise": 0.2})
    assert "dmml_weight" not in ctl and {k: v for k, v in dmml.items() if k != "dmml_weight"} == ctl
    with pytest.raises(OodmlError, match="no hyperparameter 'dmml_weight'"):
        method_params("margin+dmmlctl", {"margin+dmmlctl.dmml_weight": 0.5})
    with pytest.raises(OodmlError, match="two cohort add-ons; use one of .*\\+dmmlctl"):
        canonical_spec("margin+dmml+dmmlctl")


def test_map_at_k_matches_oodml_formula_by_hand_and_by_loops() -> None:
    # query of class 0 (class size 3: R = 2): hits at ranks 1 and 3 -> (1/1 + 2/3) / 3
    labels = np.array([[0, 1, 0, 1]])
    got = map_at_k_per_query(labels, np.array([0]), np.array([2]), k=1000)
    assert got[0] == pytest.approx((1 + 2 / 3) / 3)
    assert map_at_k_per_query(labels, np.array([0]), np.array([2]), k=2)[0] == pytest.approx(1 / 3)
    rng = np.random.default_rng(0)
    kl, ql = rng.integers(0, 4, (30, 12)), rng.integers(0, 4, 30)
    r = rng.integers(1, 8, 30)
    ref = []
    for row, q, ri in zip(kl, ql, r, strict=True):  # ooDML's mAP_1000 loop, written out
        occ = row[:5] == q
        ref.append(np.sum(np.cumsum(occ) * occ / np.arange(1, 6)) / (ri + 1))
    np.testing.assert_allclose(map_at_k_per_query(kl, ql, r, k=5), ref)


def test_select_metric_scores_recall_plus_map(data: tuple) -> None:
    fs, src, tgt, _ = data
    m = _fit("margin", data, select_metric="recall@1+map@1000")
    assert isinstance(m, EmbeddingMethod)
    xt = make_inputs("head", features=fs, rows=tgt)
    emb, y = m.embed(xt), fs.labels[tgt]
    nb = knn(emb, len(y) - 1, backend="torch")
    hits = y[nb.indices] == y[:, None]
    sizes = np.bincount(y)[y]
    ap = [np.sum(np.cumsum(h) * h / np.arange(1, len(h) + 1)) / s for h, s in zip(hits, sizes, strict=True)]
    assert m.val_score(xt, y) == pytest.approx(hits[:, 0].mean() + np.mean(ap), abs=1e-9)
    plain = _fit("margin", data)
    assert isinstance(plain, EmbeddingMethod) and plain.val_score(xt, y) == pytest.approx(hits[:, 0].mean())
    with pytest.raises(OodmlError, match="select_metric"):
        method_params("margin", {"select_metric": "map@r"})


def test_new_fields_leave_ids_and_show_only_when_set() -> None:
    assert "select_metric" not in method_params("margin")
    assert method_params("margin", {"select_metric": "recall@1+map@1000"})["select_metric"] == "recall@1+map@1000"


def test_sec_eta_from_yaml_and_method_param(tmp_path: Path) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("method: [margin+sec, triplet+sec]\nmethod_params:\n  sec_eta: 0.5\n  triplet+sec.sec_eta: 2\n")
    run = build_run_cfg({}, cfg)
    _, margin = resolve_params("margin+sec", run.method_params)
    _, triplet = resolve_params("triplet+sec", run.method_params)
    assert margin["sec"].sec_eta == 0.5 and triplet["sec"].sec_eta == 2.0
    cli = build_run_cfg({"method_params": {"sec_eta": 0.25}}, cfg)
    assert resolve_params("margin+sec", cli.method_params)[1]["sec"].sec_eta == 0.25
    m = build_method("margin+sec", MethodContext(in_dim=4), {"sec_eta": 0.25})
    assert isinstance(m, EmbeddingMethod)
    assert [r.eta for r in m.regularizers if isinstance(r, SecTerm)] == [0.25]
