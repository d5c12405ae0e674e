"""The Scott et al. paper-protocol configs resolve to their code's per-method settings (trained_models/*/opts.txt)."""

from __future__ import annotations

import pytest

from oodml.config import build_run_cfg
from oodml.methods import resolve_params

#: (method, field) -> value, as read from tylersco/adapted_deep_embeddings trained_models/<dataset>/*/opts.txt
MNIST = {("baseline", "lr"): 0.005, ("baseline", "batch_size"): 2048, ("baseline", "adapt_patience"): 20,
         ("weight_transfer", "lr"): 0.005, ("weight_transfer", "epochs"): 500.0,
         ("histogram", "batch_size"): 1024, ("histogram", "lr"): 0.005, ("adapted_histogram", "adapt_lr"): 0.005,
         ("protonet", "lr"): 0.001, ("protonet", "iterations"): 10000, ("protonet", "queries"): 100,
         ("adapted_proto", "adapt_patience"): 2000, ("adapted_proto", "adapt_check_every"): 200,
         # -p in scorings: epochs, or episodes / 200 for the prototypical nets; adap_proto_net --evaluation_episodes
         ("weight_transfer", "select_patience"): 20, ("histogram", "select_patience"): 20,
         ("adapted_histogram", "select_patience"): 20, ("protonet", "select_patience"): 10,
         ("adapted_proto", "select_patience"): 10, ("adapted_proto", "adapt_score_episodes"): 75}
OMNIGLOT_5WAY = {("baseline", "adapt_iterations"): 1000, ("baseline", "adapt_patience"): 100,
                 ("weight_transfer", "iterations"): 500, ("weight_transfer", "adapt_patience"): 100,
                 ("histogram", "batch_size"): 1024, ("adapted_histogram", "adapt_patience"): 70,
                 ("protonet", "lr"): 0.0001, ("protonet", "queries"): 5, ("adapted_proto", "adapt_patience"): 4000,
                 ("adapted_proto", "adapt_score_episodes"): 250}
#: Scott et al.'s -p on Omniglot as select_patience (scorings without a new best), the same for every n
OMNIGLOT_PATIENCE = {"weight_transfer": 100, "histogram": 70, "adapted_histogram": 70, "protonet": 20,
                     "adapted_proto": 20}


@pytest.mark.parametrize("path,expected", [("baselines/scott2018_mnist_paper.yaml", MNIST),
                                           ("baselines/scott2018_omniglot_paper_5way.yaml", OMNIGLOT_5WAY)])
def test_paper_configs_carry_their_per_method_settings(path: str, expected: dict[tuple[str, str], object]) -> None:
    cfg = build_run_cfg({}, path)
    assert cfg.backbone.startswith("scott_") and cfg.regime == "full"
    # MNIST tasks are scored on a random 10,000 of the target images (read_mnist.py); Omniglot on the other 20 - k
    assert cfg.queries == (10000 if "mnist" in path else None)
    resolved = {m: resolve_params(m, cfg.method_params)[0] for m in ("baseline", "weight_transfer", "histogram",
                                                                 "protonet", "adapted_histogram", "adapted_proto")}
    for (m, f), v in expected.items():
        assert getattr(resolved[m], f) == v, (m, f)
    for m, p in resolved.items():  # every method selects on the source validation images and adapts on a plateau
        assert p.select == "val" and p.adapt_stop == "plateau" and p.adapt_scope == "all", m
        assert p.embed_dim == 128 and p.head == "linear", m
    # adapted prototypical nets: floor(0.75 k) episode shots, the plateau on the episodic score (run_model.py)
    assert resolved["adapted_proto"].adapt_support_fraction == 0.75
    assert resolved["adapted_proto"].adapt_score == "episodes"
    assert resolved["protonet"].adapt_score == "loo_nn"  # set for adapted_proto only: protonet's cells keep their ids


@pytest.mark.parametrize("n", [5, 10, 100, 1000])
def test_omniglot_paper_configs_per_n(n: int) -> None:
    cfg = build_run_cfg({}, f"baselines/scott2018_omniglot_paper_{n}way.yaml")
    assert cfg.splits == f"splits/scott2018_omniglot_paper_{n}way.json"
    proto = resolve_params("protonet", cfg.method_params)[0]
    assert proto.ways == n and proto.lr == 0.0001 and proto.queries == 5  # classes_per_episode = n
    hist = resolve_params("histogram", cfg.method_params)[0]
    assert hist.batch_size == (2048 if n == 1000 else 1024)  # their -bs per n
    for m, patience in OMNIGLOT_PATIENCE.items():
        assert resolve_params(m, cfg.method_params)[0].select_patience == patience, m
    adapted = resolve_params("adapted_proto", cfg.method_params)[0]
    assert (adapted.adapt_support_fraction, adapted.adapt_score, adapted.adapt_score_episodes) == (0.75, "episodes",
                                                                                                  250)
