"""The `oodml` command line (README.md, "Commands"): a thin typed layer over library functions.

Every command forwards to one library function with keyword arguments. Bad input raises `OodmlError`, which becomes
one `error:` line on stderr and exit code 2 (a traceback only with OODML_DEBUG=1).
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from oodml.errors import OodmlError

app = typer.Typer(
    name="oodml",
    help="Benchmark deep metric learning under out-of-distribution class shift (ooDML).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int = 2) -> typer.Exit:
    first = " ".join(str(message).split("\n")[0].split())
    print(f"error: {first}", file=sys.stderr, flush=True)
    return typer.Exit(code)


def user_errors(fn: F) -> F:
    """Turn OodmlError (and a path that can't be used) into one `error:` line and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (OodmlError, OSError) as e:
            message = _user_message(e)
            if message is None or os.environ.get("OODML_DEBUG") == "1":
                raise
            raise _fail(message) from None

    return wrapper  # type: ignore[return-value]


#: OS errors that mean "this path can't be used" (a user problem): one `error:` line instead of a traceback
_IO_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENOSPC, errno.EDQUOT,
              errno.ENAMETOOLONG, errno.ELOOP}


#: most bootstrap replicates / sign patterns `report` and `compare` take (10**5 already takes minutes on a study)
MAX_BOOTSTRAP = 100_000


def _user_message(e: Exception) -> str | None:
    """The one-line message for a user error, or None for an error that is a bug (shown as a traceback)."""
    if isinstance(e, OodmlError):
        return str(e)
    if isinstance(e, FileNotFoundError):
        return f"file not found: {e.filename or e}"
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        from oodml.io import disk_error

        return str(disk_error(e, e.filename or "the destination"))
    if isinstance(e, OSError) and e.errno in _IO_ERRNOS:
        where = f" {e.filename!r}" if e.filename else ""
        return f"cannot access{where}: {e.strerror}; check the path and its permissions"
    return None


def _default(name: str) -> str:
    """`(default: X)` for help texts, X being RunCfg's default for the field `name` (the one place it is stated)."""
    from oodml.config import RunCfg
    from oodml.ranges import format_int_list

    value = RunCfg.__dataclass_fields__[name].default
    if value is None or isinstance(value, tuple):
        return f"(default: {format_int_list(value)})"
    return f"(default: {value:,})" if isinstance(value, int) else f"(default: {value})"


def _default_backbone() -> str:
    from oodml.features.backbones import DEFAULT_BACKBONE

    return DEFAULT_BACKBONE


#: the defaults `--help` prints for options whose value comes from a library read when the command runs (the CLI
#: imports no library at start-up); tests/test_help_text.py checks them against DEFAULT_BACKBONE and LadderCfg()
SHOWN_DEFAULTS = {"backbone": "efficientnet_lite0", "levels": "8", "ks": "2,5,10", "episodes": "10", "seed": "0"}


def _shown(name: str) -> str:
    return f"(default: {SHOWN_DEFAULTS[name]})"


def _plugin_option() -> Any:
    return typer.Option("--plugin", help="register more methods: a module name (my_pkg.methods) or a .py file path "
                                         "(docs/plugins.md); repeatable")


def _weights_option() -> Any:
    return typer.Option(metavar="FILE", help="local weights (state dict: .pth, .bin, .safetensors) for --backbone, "
                                             "e.g. timm:resnet18; its sha256 goes into the features' meta")


def _ladder_default(name: str) -> Callable[[], Any]:
    """The default of a `LadderCfg` field, read when the command runs (the CLI imports no library at start-up)."""

    def default() -> Any:
        from oodml.splits.generate import LadderCfg

        value = getattr(LadderCfg(), name)
        return ",".join(map(str, value)) if isinstance(value, tuple) else value

    return default


def _check_destinations(*folders: tuple[Path | str, str], cache: bool = False) -> None:
    """Every folder a command will write to must be writable before it starts any work."""
    from oodml.errors import check_writable

    for folder, what in folders:
        check_writable(folder, what)
    if cache:
        from oodml.data.files import cache_dir

        check_writable(cache_dir(), "the oodml cache ($OODML_CACHE)")


class ListKind(str, Enum):
    """What `oodml list` lists."""

    datasets = "datasets"
    backbones = "backbones"
    methods = "methods"


@app.command("list")
@user_errors
def list_cmd(
    kind: Annotated[ListKind, typer.Argument(help="datasets, backbones or methods")],
    plugin: Annotated[list[str], _plugin_option()] = [],
) -> None:
    """List registered names, one per line, with a one-line description."""
    for name, desc in _registry_listing(kind.value, plugins=tuple(plugin)):
        typer.echo(f"{name}\t{desc}")


def _registry_listing(kind: str, *, plugins: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    if kind == "datasets":
        from oodml.data import DATASETS as reg
    elif kind == "backbones":
        from oodml.features.backbones import BACKBONES as reg  # type: ignore[assignment]
    else:
        from oodml.methods import ADDONS, METHODS as reg, load_plugins  # type: ignore[assignment]

        load_plugins(plugins)
    rows = [(n, reg.info(n).description) for n in reg.names()]
    if kind == "methods":
        rows += [(a, f"alias of {n}") for a, n in reg.aliases().items()]
        rows += [(f"+{a}", f"add-on ({ADDONS.info(a).kind}): {ADDONS.info(a).description}") for a in ADDONS.names()]
        rows += [(f"+{a}", f"alias of +{n}") for a, n in ADDONS.aliases().items()]
    return rows


@app.command()
@user_errors
def embed(
    dataset: Annotated[str, typer.Argument(help="registered dataset name (oodml list datasets), or `folder` with "
                                                "--data-root DIR, or a folder dataset's name")],
    backbone: Annotated[str, typer.Option(default_factory=_default_backbone, show_default=False,
                                          help=f"registered backbone, or timm:<name> {_shown('backbone')}")],
    data_root: Annotated[Path | None, typer.Option(help="dataset folder or archive location")] = None,
    classes: Annotated[list[str], typer.Option(help="only classes matching these fnmatch patterns")] = [],
    out: Annotated[Path | None, typer.Option(help="features file to write (.npz)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="images per forward pass")] = 64,
    workers: Annotated[int | None, typer.Option(
        min=0, help="image-decoding workers: with ONNX Runtime N threads beside one session (default: one lane per "
                    "ONNX Runtime thread, each decoding and running its own batches); with torch N processes")] = None,
    dataset_option: Annotated[list[str], typer.Option(
        help="dataset loader option NAME=VALUE, e.g. rotations=true for omniglot (oodml list datasets)")] = [],
    runtime: Annotated[str, typer.Option(
        help="where the backbone runs: onnx (ONNX Runtime), torch, or auto (onnx when it works, else torch)")] = "auto",
    backbone_weights: Annotated[Path | None, _weights_option()] = None,
    name: Annotated[str | None, typer.Option(
        help="name of a folder dataset (default: its folder's name); it names splits/<name>.json and results")] = None,
    decode: Annotated[str, typer.Option(
        help="exact: the backbone's preprocessing bit for bit; scaled: JPEGs larger than the resize target shrunk "
             "while decoding (faster, other features; docs/features.md)")] = "exact",
) -> None:
    """Embed every image of a dataset with a backbone into a features file (format: docs/formats.md)."""
    from oodml.config import dataset_options
    from oodml.features.extract import embed_dataset

    _check_destinations(*([(Path(out).parent, "--out")] if out else []), cache=True)
    path = embed_dataset(dataset=dataset, backbone=backbone, data_root=data_root, classes=tuple(classes),
                         out=out, batch_size=batch_size, workers=workers,
                         options=_with_name(dataset_options(dataset_option), name), runtime=runtime,
                         weights=backbone_weights, decode=decode)
    typer.echo(str(path))


@app.command("make-splits")
@user_errors
def make_splits(
    *,
    dataset: Annotated[str | None, typer.Argument(help="dataset name, as for `oodml embed` (optional with "
                                                       "--features)")] = None,
    backbone: Annotated[str, typer.Option(default_factory=_default_backbone, show_default=False,
                                          help=f"backbone whose features define the FID {_shown('backbone')}")],
    data_root: Annotated[Path | None, typer.Option(help="dataset folder or archive location")] = None,
    features: Annotated[Path | None, typer.Option(help="build from this features file, no images needed")] = None,
    levels: Annotated[int, typer.Option(min=2, default_factory=_ladder_default("levels"), show_default=False,
                                        help=f"number of levels in the ladder {_shown('levels')}")],
    k: Annotated[str, typer.Option("--k", default_factory=_ladder_default("ks"), show_default=False,
                                   help=f"shots for the episodes, e.g. 2,5,10 {_shown('ks')}")],
    episodes: Annotated[int, typer.Option(min=1, default_factory=_ladder_default("episodes"), show_default=False,
                                          help=f"episodes per k and level {_shown('episodes')}")],
    ways: Annotated[int | None, typer.Option(min=2, help="classes per episode (n-way); default: all test classes")]
    = None,
    seed: Annotated[int, typer.Option(min=0, default_factory=_ladder_default("seed"), show_default=False,
                                      help=f"seed for val classes and episodes {_shown('seed')}")],
    out: Annotated[Path | None, typer.Option(help="split file (default splits/<dataset>.json)")] = None,
    dataset_option: Annotated[list[str], typer.Option(
        help="dataset loader option NAME=VALUE, e.g. rotations=true for omniglot (oodml list datasets)")] = [],
    runtime: Annotated[str, typer.Option(
        help="where the backbone runs: onnx (ONNX Runtime), torch, or auto (onnx when it works, else torch)")] = "auto",
    backbone_weights: Annotated[Path | None, _weights_option()] = None,
    allow_random_weights: Annotated[bool, typer.Option(
        "--allow-random-weights", help="build the ladder even on a backbone with random weights (conv4, ...); refused otherwise")] = False,
    name: Annotated[str | None, typer.Option(
        help="name of a folder dataset (default: its folder's name); it names splits/<name>.json and results")] = None,
) -> None:
    """Build a ladder of train/test class splits with rising FID, plus k-shot episodes (format: docs/formats.md)."""
    from oodml.config import dataset_options
    from oodml.ranges import parse_int_list
    from oodml.splits.generate import make_splits_command

    ks = parse_int_list(k, "--k", minimum=1)
    assert ks is not None
    _check_destinations((Path(out).parent if out else Path("splits"), "--out"), cache=features is None)
    path = make_splits_command(dataset=dataset, backbone=backbone, data_root=data_root, features=features,
                               levels=levels, ks=ks, episodes=episodes, ways=ways, seed=seed, out=out,
                               dataset_options=_with_name(dataset_options(dataset_option), name), runtime=runtime,
                               weights=backbone_weights, allow_random_weights=allow_random_weights)
    typer.echo(str(path))


@app.command("import-splits")
@user_errors
def import_splits(
    pickle_file: Annotated[Path, typer.Argument(metavar="PICKLE", help="an ooDML *_splits.pkl file")],
    dataset: Annotated[str, typer.Option(help="dataset the pickle belongs to (cub200, cars196, sop)")],
    out: Annotated[Path | None, typer.Option(help="split file (default splits/<dataset>_oodml.json)")] = None,
) -> None:
    """Convert a published ooDML split pickle into an oodml split file, without executing pickled code."""
    from oodml.splits.importer import import_splits_command

    _check_destinations((Path(out).parent if out else Path("splits"), "--out"))
    path = import_splits_command(pickle_file=pickle_file, dataset=dataset, out=out)
    typer.echo(str(path))


@app.command()
@user_errors
def run(
    method: Annotated[str | None, typer.Option(help="method names or fnmatch patterns, comma-separated")] = None,
    dataset: Annotated[str | None, typer.Option(help="dataset (default: from the split file)")] = None,
    splits: Annotated[str | None, typer.Option(metavar="FILE", help="split file (default splits/<dataset>.json)")]
    = None,
    features: Annotated[str | None, typer.Option(
        metavar="FILE", help="features file (default: the split file's features)")] = None,
    shifts: Annotated[str | None, typer.Option(help=f"levels: 3, 1,3,5, 1..8, all {_default('shifts')}")] = None,
    k: Annotated[str | None, typer.Option("--k", help=f"shots: 0 (zero-shot), 2, 5, 10 ... {_default('ks')}")]
    = None,
    seeds: Annotated[str | None, typer.Option(help=f"seeds, e.g. 0..2 {_default('seeds')}")] = None,
    regime: Annotated[str | None, typer.Option(
        help=f"head (frozen backbone, cached features) or full {_default('regime')}")] = None,
    executor: Annotated[str | None, typer.Option(help=f"local or ray {_default('executor')}")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address HOST:PORT")] = None,
    ray_resources: Annotated[str | None, typer.Option(
        metavar="NAME=AMOUNT,...", help="Ray resources per cell, e.g. GPU=0.5 or CPU=4,fast=1 (default: CPU=1; "
                                        "full regime on CUDA: GPU=1); docs/cluster.md")] = None,
    workers: Annotated[int | None, typer.Option(
        help="parallel cells, one thread each, so no number depends on it (default: CPU count)")] = None,
    results: Annotated[str | None, typer.Option(metavar="DIR", help=f"results folder {_default('results')}")] = None,
    config: Annotated[Path | None, typer.Option(help="study config YAML with the same option names")] = None,
    method_param: Annotated[list[str], typer.Option(help="override a hyperparameter: name=value or m.name=value")]
    = [],
    plugin: Annotated[list[str], _plugin_option()] = [],
    force: Annotated[bool | None, typer.Option("--force/--no-force", help="recompute finished cells")] = None,
    device: Annotated[str | None, typer.Option(help=f"auto, cpu, cuda or cuda:N {_default('device')}")] = None,
    data_root: Annotated[str | None, typer.Option(metavar="DIR", help="dataset root (full regime)")] = None,
    backbone: Annotated[str | None, typer.Option(
        help="full regime: the backbone to train on the images (default: the split file's)")] = None,
    max_cells: Annotated[int | None, typer.Option(
        help=f"refuse a grid of more cells than this; raise it to confirm a bigger one {_default('max_cells')}")]
    = None,
    dataset_option: Annotated[list[str], typer.Option(
        help="dataset loader option NAME=VALUE, e.g. rotations=true for omniglot (oodml list datasets)")] = [],
    runtime: Annotated[str | None, typer.Option(
        help="where the backbone runs if the features must be computed: onnx, torch, or auto (onnx when it works, "
             f"else torch) {_default('runtime')}")] = None,
    backbone_weights: Annotated[str | None, _weights_option()] = None,
    queries: Annotated[int | None, typer.Option(
        help="most queries per k-shot episode: a random draw of this many, the same for every method and seed "
             "(default: all of them)")] = None,
) -> None:
    """Run methods x shift levels x k x seeds; each cell's result is stored as soon as it finishes."""
    from oodml.config import build_run_cfg, parse_param_overrides

    options: dict[str, Any] = dict(
        method=method, dataset=dataset, splits=splits, features=features, shifts=shifts, k=k, seeds=seeds,
        regime=regime, executor=executor, address=address, workers=workers, results=results, force=force,
        device=device, method_params=parse_param_overrides(method_param), plugins=tuple(plugin),
        data_root=data_root, dataset_options=list(dataset_option), backbone=backbone, max_cells=max_cells,
        runtime=runtime, queries=queries, ray_resources=ray_resources, backbone_weights=backbone_weights,
    )
    cfg = build_run_cfg(options, config)
    _check_destinations((cfg.results, "--results"))
    from oodml.runner import run_grid

    raise typer.Exit(run_grid(cfg))


@app.command()
@user_errors
def report(
    results: Annotated[Path, typer.Option(help="results folder written by `oodml run`")] = Path("results"),
    metric: Annotated[str | None, typer.Option(help="leaderboard metric (default: recall@1 at every k that stores "
                                                    "it, else accuracy)")] = None,
    bootstrap: Annotated[int, typer.Option(min=0, max=MAX_BOOTSTRAP, help="Monte Carlo sign patterns of the seed-level "
                                                       "permutation test beyond 20 seeds "
                                                       "(intervals are seed-level t intervals)")]
    = 2000,
) -> None:
    """Write leaderboards, degradation curves and report.md/html per dataset from a results folder (docs/formats.md,
    docs/results.md)."""
    from oodml.report import build_report

    for path in build_report(results=results, metric=metric, bootstrap=bootstrap):
        typer.echo(str(path))


@app.command()
@user_errors
def compare(
    a: Annotated[str, typer.Argument(metavar="A", help="method (the difference is A minus B)")],
    b: Annotated[str, typer.Argument(metavar="B", help="method to compare with")],
    results: Annotated[Path, typer.Option(help="results folder written by `oodml run`")] = Path("results"),
    k: Annotated[str | None, typer.Option("--k", help="shots: 0, 10 or 2,5 (default: every k both have)")] = None,
    metric: Annotated[str | None, typer.Option(help="metric (default recall@1, else accuracy)")] = None,
    levels: Annotated[str | None, typer.Option(help="split levels: 3, 1..8 (default: all)")] = None,
    bootstrap: Annotated[int, typer.Option(min=0, max=MAX_BOOTSTRAP, help="Monte Carlo sign patterns of the seed-level "
                                                       "permutation test beyond 20 seeds")] = 2000,
) -> None:
    """Paired difference A - B per level and over levels: 95% seed-level t interval, paired t test over seeds, Holm
    over levels, and a verdict line."""
    from oodml.ranges import parse_int_list
    from oodml.report.compare import compare_command, render

    found = compare_command(results=results, a=a, b=b, ks=parse_int_list(k, "--k") if k else None, metric=metric,
                            levels=parse_int_list(levels, "--levels", minimum=1) if levels else None,
                            bootstrap=bootstrap)
    for c in found:
        typer.echo(render(c))
        typer.echo(c.verdict)
        typer.echo(f"written: {c.path}")


def _with_name(options: dict[str, Any], name: str | None) -> dict[str, Any]:
    """Loader options plus `name` (a folder dataset's `--name`)."""
    return {**options, "name": name} if name is not None else options


@app.command()
@user_errors
def plan(
    a: Annotated[str, typer.Argument(metavar="A", help="method (the difference is A minus B)")],
    b: Annotated[str, typer.Argument(metavar="B", help="method to compare with")],
    results: Annotated[Path, typer.Option(help="pilot results folder (2 or more seeds; 3 or more recommended)")]
    = Path("results"),
    k: Annotated[int, typer.Option("--k", min=0, help="shots (0: zero-shot)")] = 0,
    metric: Annotated[str | None, typer.Option(help="metric (default recall@1, else accuracy)")] = None,
    delta: Annotated[float | None, typer.Option(help="difference to resolve (default: the pilot's estimate)")] = None,
    level: Annotated[int | None, typer.Option(min=1, help="plan one split level (default: the mean over levels)")]
    = None,
    power: Annotated[float, typer.Option(min=0.5, max=0.99, help="target power of the two-sided 0.05 test")] = 0.8,
) -> None:
    """How many seeds (and episodes) resolve A - B: variance components from a pilot, seeds needed, interval widths."""
    from oodml.report.plan import plan_command, render

    for p in plan_command(results=results, a=a, b=b, k=k, metric=metric, delta=delta, level=level, power=power):
        typer.echo(render(p, a, b, power))


def main(argv: list[str] | None = None) -> None:
    """Console entry point: usage errors also become one `error:` line and exit 2."""
    try:  # typer >= 0.20 vendors click
        from typer._click.exceptions import ClickException, NoArgsIsHelpError  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover
        from click.exceptions import ClickException, NoArgsIsHelpError  # type: ignore[no-redef,assignment]

    command = typer.main.get_command(app)
    try:
        rc = command.main(args=argv, prog_name="oodml", standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(130)
    except NoArgsIsHelpError as e:
        e.show()
        sys.exit(2)
    except ClickException as e:
        first = " ".join(e.format_message().split())
        print(f"error: {first}; see `oodml {_subcommand(argv)}--help`", file=sys.stderr)
        sys.exit(2)
    sys.exit(rc if isinstance(rc, int) else 0)


def _subcommand(argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return f"{args[0]} " if args and not args[0].startswith("-") else ""
