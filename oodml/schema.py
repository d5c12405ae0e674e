"""The tidy result-row schema shared by the runner (writer) and the reporter (reader): GUIDE §5, SPEC §4."""

from __future__ import annotations

SCHEMA_VERSION = 1

#: Columns of every result row, in this order, in `all.csv` and in the cell files' `rows`.
ROW_COLUMNS: tuple[str, ...] = (
    "schema_version", "oodml_version", "git_sha", "created_at",
    "cell_id",
    "dataset", "backbone", "feature_hash",
    "method", "method_family", "method_params",
    "split_level", "split_fid", "n_train_classes", "n_test_classes", "split_hash",
    "k_shot", "n_episodes", "seed",
    "metric", "value", "episode_std", "n_queries", "knn_k", "knn_backend",
    "status", "error", "wall_time_s", "peak_mem_mb", "device",
    "config_hash", "config_json",
)

#: Per-episode rows (the `episodes` table): the row key plus `episode`.
EPISODE_COLUMNS: tuple[str, ...] = (
    "cell_id", "method", "split_level", "k_shot", "seed", "episode", "metric", "value",
)

STATUSES: tuple[str, ...] = ("ok", "error", "skipped")
