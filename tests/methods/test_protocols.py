"""The papers' protocols: ooDML's few-shot adaptation (`adapt_protocol=oodml`, per-k schedules) and its batched
computation over episodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from oodml.config import build_run_cfg
from oodml.errors import OodmlError
from oodml.methods import EmbeddingMethod, MethodContext, build_method, make_inputs, method_params
from oodml.methods.batched import distance_weighted_triplets, margin_loss
from oodml.methods.params import schedule_for
from oodml.runner import CellStore, run_grid
from tests.conftest import make_blobs
from tests.runner.fakes import write_inputs

TINY = {"iterations": 8, "batch_size": 12, "embed_dim": 8, "ways": 4, "shots": 2, "queries": 2}


def test_defaults_leave_resolved_params_and_cell_ids_as_they_were() -> None:
    p = method_params("adapted_margin")
    assert "adapt_protocol" not in p and p["adapt_iterations"] == 100 and p["adapt_lr"] == 1e-3


def test_oodml_protocol_sets_its_schedule_unless_given() -> None:
    p = method_params("adapted_proto", {"adapt_protocol": "oodml"})
    assert (p["adapt_protocol"], p["adapt_lr"], p["adapt_iterations"], p["adapt_scope"]) == \
        ("oodml", 1e-4, "2:1000,5:1500", "last")
    # weight_transfer fine-tunes everything by default; the protocol adapts its last layer only
    assert method_params("weight_transfer", {"adapt_protocol": "oodml"})["adapt_scope"] == "last"
    mine = method_params("adapted_proto", {"adapt_protocol": "oodml", "adapt_iterations": {5: 20, 2: 10},
                                           "adapt_lr": 1e-3})
    assert (mine["adapt_iterations"], mine["adapt_lr"]) == ("2:10,5:20", 1e-3)


@pytest.mark.parametrize(("k", "expected"), [(1, 1000), (2, 1000), (3, 1000), (5, 1500), (10, 1500)])
def test_schedule_resolves_per_k(k: int, expected: int) -> None:
    assert schedule_for("2:1000,5:1500", k) == expected
    assert schedule_for(7, k) == 7


@pytest.mark.parametrize("bad", ["2:1000,", "2=1000", "0:5", "2:1,2:3", "2:-1", -1])
def test_bad_schedules_are_clear_errors(bad: Any) -> None:
    with pytest.raises(OodmlError, match="adapt_iterations"):
        method_params("adapted_margin", {"adapt_iterations": bad})


def test_command_line_schedule_is_not_read_as_base_60() -> None:
    from oodml.config import parse_param_overrides

    assert parse_param_overrides(["adapt_iterations=2:30"]) == {"adapt_iterations": "2:30"}  # YAML 1.1: 150


def test_oodml_protocol_rejects_settings_it_does_not_have() -> None:
    with pytest.raises(OodmlError, match="adapt_protocol=oodml"):
        method_params("adapted_margin", {"adapt_protocol": "oodml", "adapt_stop": "plateau"})
    with pytest.raises(OodmlError, match="adapt_protocol"):
        method_params("adapted_margin", {"adapt_protocol": "ooDML"})


def test_margin_loss_equals_pml_margin_loss_on_the_same_triplets() -> None:
    from pytorch_metric_learning.losses import MarginLoss

    g = torch.Generator().manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(2, 10, 4, generator=g, dtype=torch.float64), dim=2)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    a, p = torch.arange(0, 10, 2), torch.arange(1, 10, 2)
    n = torch.tensor([2, 4, 6, 8, 0])
    ref = [MarginLoss(margin=0.2, beta=1.2)(e[t], labels, (a, p, n)) for t in range(2)]
    task = torch.tensor([0] * 5 + [1] * 5)
    got = margin_loss(e, task, torch.cat([a, a]), torch.cat([p, p]), torch.cat([n, n]), n_tasks=2)
    assert torch.allclose(got, torch.stack(ref), atol=1e-12)


def test_distance_weighted_triplets_sample_as_pml_does() -> None:
    from oodml.methods.pml_batched import BatchedDistanceWeightedMiner

    g = torch.Generator().manual_seed(1)
    e = torch.nn.functional.normalize(torch.randn(3, 12, 6, generator=g), dim=2)
    labels = torch.stack([torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 4, 4, 5, 5])[torch.randperm(12, generator=g)]
                          for _ in range(3)])
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    task, a, p, n = distance_weighted_triplets(e, labels, gens)
    for t in range(3):
        mine = task == t
        ref_a = BatchedDistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4).mine(e[t], labels[t], e[t],
                                                                                       labels[t])[0]
        assert torch.equal(a[mine], ref_a)  # the same anchors, as many triplets each
        lab = labels[t]
        assert bool((lab[p[mine]] == lab[a[mine]]).all() and (p[mine] != a[mine]).all())
        assert bool((lab[n[mine]] != lab[a[mine]]).all())
        assert bool((torch.linalg.vector_norm(e[t, a[mine]] - e[t, n[mine]], dim=1) < 1.4).all())
    # a task's draws come from its own generator: the same with other tasks beside it or not
    alone = distance_weighted_triplets(e[1:2], labels[1:2], [torch.Generator().manual_seed(1)])
    assert all(torch.equal(x[task == 1], y) for x, y in zip((a, p, n), alone[1:], strict=True))


@pytest.fixture(scope="module")
def data() -> tuple:
    fs = make_blobs(n_classes=16, per_class=8, dim=12, seed=5, spread=1.0)
    src = np.flatnonzero(fs.labels < 8)
    rng = np.random.default_rng(1)
    supports = []
    for k in (2, 2, 3, 5):
        rows = np.concatenate([rng.choice(np.flatnonzero(fs.labels == c), k, replace=False) for c in range(8, 16)])
        supports.append((make_inputs("head", features=fs, rows=rows), fs.labels[rows]))
    return fs, src, supports


def _fitted(spec: str, data: tuple, **extra: Any) -> EmbeddingMethod:
    fs, src, _ = data
    m = build_method(spec, MethodContext(seed=0, in_dim=12), {**TINY, **extra})
    assert isinstance(m, EmbeddingMethod)
    m.fit(make_inputs("head", features=fs, rows=src), fs.labels[src])
    return m


@pytest.mark.parametrize(("spec", "extra"), [("adapted_margin", {}), ("adapted_proto", {"head": "mlp",
                                                                                       "hidden_dim": 16}),
                                             ("weight_transfer+dmml", {})])
def test_batched_episodes_match_one_at_a_time(data: tuple, spec: str, extra: dict[str, Any]) -> None:
    fs = data[0]
    m = _fitted(spec, data, adapt_protocol="oodml", adapt_iterations="2:6,5:9", **extra)
    q = make_inputs("head", features=fs, rows=np.arange(len(fs.labels)))
    source = [m._embed_net(i, q) for i in range(m.n_models)]
    one = [m.adapt(x, y) for x, y in data[2]]
    many = list(m.adapt_episodes(data[2]))
    assert len(many) == len(data[2])
    for a, b in zip(one, many, strict=True):
        assert isinstance(a, EmbeddingMethod) and isinstance(b, EmbeddingMethod)
        for i in range(m.n_models):
            assert np.abs(a._embed_net(i, q) - b._embed_net(i, q)).max() <= 1e-6
            assert np.abs(b._embed_net(i, q) - source[i]).max() > 1e-4  # it did adapt
        # only the last layer moved; the source model is untouched
        for net, src_net in zip(b.nets, m.nets, strict=True):
            for (name, w), w0 in zip(net.head.named_parameters(), src_net.head.parameters(), strict=True):
                assert torch.equal(w, w0) == (not name.startswith(str(len(net.head) - 1)))
    assert [m._embed_net(i, q) for i in range(m.n_models)][0].tobytes() == source[0].tobytes()


def test_schedule_decides_the_iterations_per_support(data: tuple) -> None:
    # a k whose schedule entry is 0 leaves the source model as it is; the other k adapts
    m = _fitted("adapted_margin", data, adapt_protocol="oodml", adapt_iterations="2:0,5:4")
    q = make_inputs("head", features=data[0], rows=np.arange(20))
    two, five = m.adapt(*data[2][0]), m.adapt(*data[2][3])
    assert np.array_equal(two.embed(q), m.embed(q)) and not np.array_equal(five.embed(q), m.embed(q))
    assert m.adaptation_record(5)["iterations"] == 4 and m.adaptation_record(3)["iterations"] == 0


def test_baseline_refuses_the_oodml_protocol(data: tuple) -> None:
    m = _fitted("baseline", data, adapt_protocol="oodml")
    with pytest.raises(OodmlError, match="from scratch"):
        m.adapt(*data[2][0])


def test_cell_records_the_resolved_schedule_per_k(tmp_path: Path) -> None:
    feats, splits = write_inputs(tmp_path, ks=(2, 3))
    c = build_run_cfg(dict(method="adapted_margin,margin", features=str(feats), splits=str(splits), shifts="1",
                           k="0,2,3", seeds="0", results=str(tmp_path / "r"), workers=1,
                           method_params={"iterations": 4, "adapt_protocol": "oodml",
                                          "adapt_iterations": "2:3,3:5", "batch_size": 8}))
    assert run_grid(c) == 0
    cells = {cell["config"]["methods"][0]: cell for cell in CellStore(tmp_path / "r").cells()}
    adaptation = cells["adapted_margin"]["training"]["adaptation"]
    assert {k: v["iterations"] for k, v in adaptation.items()} == {"2": 3, "3": 5}
    assert adaptation["2"]["protocol"] == "oodml" and adaptation["2"]["lr"] == 1e-4
    assert "training" not in cells["margin"]  # nothing adapts
    assert cells["adapted_margin"]["config"]["method_params"]["adapt_iterations"] == "2:3,3:5"


def _overfitting_source() -> tuple[Any, np.ndarray, Any, np.ndarray]:
    """Train classes told apart by dims 4-15 (dims 0-3 noise), validation classes by dims 0-3 only: the more the
    embedding fits the train classes, the more it drops what tells the validation classes apart."""
    from oodml.methods import FeatureInputs

    rng = np.random.default_rng(0)

    def classes(n: int, informative: slice, noise: slice) -> tuple[Any, np.ndarray]:
        centers = np.zeros((n, 16))
        centers[:, informative] = rng.normal(0, 3.0, (n, 12 if informative.start else 4))
        labels = np.repeat(np.arange(n), 8)
        x = centers[labels] + rng.normal(0, 0.3, (len(labels), 16))
        x[:, noise] += rng.normal(0, 3.0, (len(labels), 4 if noise.start is None else 12))
        return FeatureInputs(torch.from_numpy(x.astype(np.float32))), labels

    return (*classes(10, slice(4, 16), slice(None, 4)), *classes(6, slice(None, 4), slice(4, 16)))


def test_val_selection_keeps_the_best_checkpoint_not_the_last() -> None:
    xt, yt, xv, yv = _overfitting_source()
    base = {"iterations": 40, "batch_size": 16, "embed_dim": 8, "lr": 1e-2}
    m = build_method("margin", MethodContext(seed=0, in_dim=16), {**base, "select": "val", "select_every": 5})
    assert isinstance(m, EmbeddingMethod)
    m.fit(xt, yt, val=(xv, yv))
    rec = m.fit_record()
    curve = dict((int(i), s) for i, s in rec["val_curve"])
    assert sorted(curve) == list(range(5, 41, 5)) and rec["kept_iteration"] < 40
    assert curve[rec["kept_iteration"]] == max(curve.values()) > curve[40]
    # the kept weights are those of a run stopped there: scoring the validation classes changes nothing else
    short = build_method("margin", MethodContext(seed=0, in_dim=16), {**base, "iterations": rec["kept_iteration"]})
    short.fit(xt, yt)
    assert np.array_equal(m.embed(xv), short.embed(xv))
    with pytest.raises(OodmlError, match="select=val needs validation classes"):
        m.fit(xt, yt)


def test_val_patience_stops_early_with_the_same_kept_weights() -> None:
    """Scott et al.'s early stopping: `select_patience` scorings without a new best end the training; the kept
    checkpoint is the one the full-length run keeps when the best comes before the stop."""
    xt, yt, xv, yv = _overfitting_source()
    base = {"iterations": 40, "batch_size": 16, "embed_dim": 8, "lr": 1e-2, "select": "val", "select_every": 5}
    full = build_method("margin", MethodContext(seed=0, in_dim=16), base)
    full.fit(xt, yt, val=(xv, yv))
    kept = full.fit_record()["kept_iteration"]
    early = build_method("margin", MethodContext(seed=0, in_dim=16), {**base, "select_patience": 2})
    early.fit(xt, yt, val=(xv, yv))
    rec = early.fit_record()
    assert rec["stopped_at"] == kept + 10 < 40 and rec["kept_iteration"] == kept and rec["patience"] == 2
    assert [int(i) for i, _ in rec["val_curve"]] == list(range(5, kept + 11, 5))
    assert np.array_equal(early.embed(xv), full.embed(xv))
    with pytest.raises(OodmlError, match="select_patience >= 0"):
        build_method("margin", MethodContext(seed=0, in_dim=16), {**base, "select_patience": -1})


def test_epochs_set_the_training_length_from_the_train_size() -> None:
    xt, yt, _, _ = _overfitting_source()  # 80 images
    m = build_method("margin", MethodContext(seed=0, in_dim=16), {"epochs": 1.5, "batch_size": 16, "embed_dim": 8})
    assert isinstance(m, EmbeddingMethod)
    m.fit(xt, yt)
    assert m.fit_record() == {"iterations": 8, "epochs": 1.5}  # ceil(1.5 x 80 / 16)
    assert "epochs" not in method_params("margin") and "select" not in method_params("margin")


def test_cell_holds_val_classes_out_and_records_the_selection(tmp_path: Path) -> None:
    from oodml.splits.spec import SplitSpec

    feats, splits = write_inputs(tmp_path, ks=(2,))
    spec = SplitSpec.load(splits)
    for lv in spec.levels:
        lv.val_classes = lv.train_classes[:2]
    spec.save(splits)
    c = build_run_cfg(dict(method="margin", features=str(feats), splits=str(splits), shifts="1", k="0", seeds="0",
                           results=str(tmp_path / "r"), workers=1,
                           method_params={"iterations": 6, "select": "val", "select_every": 2, "batch_size": 8}))
    assert run_grid(c) == 0
    (cell,) = CellStore(tmp_path / "r").cells()
    fit = cell["training"]["fit"]
    assert [i for i, _ in fit["val_curve"]] == [2, 4, 6] and fit["kept_iteration"] in (2, 4, 6)
    assert cell["rows"][0]["n_train_classes"] == len(spec.levels[0].train_classes)


def test_ens_members_are_independent_and_the_ensemble_is_normalised(data: tuple) -> None:
    from oodml.methods.cohort import EnsembleMethod

    fs = data[0]
    q = make_inputs("head", features=fs, rows=np.arange(len(fs.labels)))
    ens = build_method("margin+ens", MethodContext(seed=0, in_dim=12), {**TINY, "ens_models": 3})
    assert isinstance(ens, EnsembleMethod) and len(ens.members) == 3
    ens.fit(make_inputs("head", features=fs, rows=data[1]), fs.labels[data[1]])
    parts = [m.embed(q) for m in ens.members]
    assert all(not np.allclose(parts[i], parts[j]) for i in range(3) for j in range(i))  # own seeds each
    plain = _fitted("margin", data)
    variants = ens.embed_variants(q)
    assert np.array_equal(variants[""], plain.embed(q))  # model 1 is the plain method
    cat = variants["ensemble"]
    assert cat.shape == (len(fs.labels), 3 * TINY["embed_dim"])
    assert np.allclose(np.linalg.norm(cat, axis=1), 1.0, atol=1e-6)
    assert np.allclose(cat[:, :TINY["embed_dim"]] * np.sqrt(3), parts[0], atol=1e-5)  # normalised, then joined
    both = build_method("adapted_margin+ens", MethodContext(seed=0, in_dim=12),
                        {**TINY, "ens_models": 2, "adapt_protocol": "oodml", "adapt_iterations": 3})
    assert isinstance(both, EnsembleMethod)
    both.fit(make_inputs("head", features=fs, rows=data[1]), fs.labels[data[1]])
    adapted = list(both.adapt_episodes(data[2][:2]))
    assert len(adapted) == 2 and all(isinstance(a, EnsembleMethod) and len(a.members) == 2 for a in adapted)
    assert not np.array_equal(adapted[0].embed_variants(q)["ensemble"], both.embed_variants(q)["ensemble"])


def test_addon_registry_lists_and_rejects_two_cohorts() -> None:
    from oodml.cli import _registry_listing
    from oodml.methods import ADDONS

    assert ADDONS.names() == ["dmml", "dmmlctl", "ens", "sec"] and ADDONS.info("ens").kind == "cohort"
    names = [n for n, _ in _registry_listing("methods")]
    assert {"+sec", "+dmml", "+ens", "adapted_hist"} <= set(names)
    with pytest.raises(OodmlError, match="two cohort add-ons"):
        method_params("margin+dmml+ens")
    assert method_params("margin+ens")["ens_models"] == 3 == method_params("margin+dmml")["dmml_models"]
