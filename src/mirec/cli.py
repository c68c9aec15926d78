"""The ``mirec`` command line: prepare, train, evaluate, recommend, graph-stats, datasets, models."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import typing
import warnings
from functools import partial
from pathlib import Path
from typing import Any

from mirec import choices
from mirec.utils import parse_int_list


def _strict_json(value: Any) -> Any:
    """Non-finite floats as the strings "inf", "-inf", "nan" (JSON has no Infinity or NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(v) for v in value]
    return value


def _print_json(data: Any) -> None:
    print(json.dumps(_strict_json(data), indent=2, sort_keys=False, default=str, allow_nan=False))


def _print_result(args: argparse.Namespace, data: Any, as_table: Any) -> None:
    """A table for a person at a terminal (``as_table(data)``), JSON for scripts (``--json``, or a pipe)."""
    from mirec.console import wants_table

    print(as_table(data)) if wants_table(args) else _print_json(data)


def cmd_prepare(args: argparse.Namespace) -> None:
    from mirec.data.prepare import PrepareOptions, prepare

    options = PrepareOptions(
        min_item_count=args.min_count,
        min_user_count=args.min_count,
        iterative_kcore=args.kcore,
        min_timestamp=args.min_timestamp,
        max_timestamp=args.max_timestamp,
        drop_duplicates=args.drop_duplicates,
        split=args.split,
        temporal_cuts=tuple(float(c) for c in args.temporal_cuts.split(",")),
        temporal_cut_by=args.temporal_cut_by,
    )
    reader_options: dict[str, Any] = {}
    for text in args.reader_option:
        key, _, value = text.partition("=")
        reader_options[key] = value
    if args.behaviors:
        reader_options["behaviors"] = args.behaviors.split(",")
    if args.encoding:
        reader_options["encoding"] = args.encoding
    inputs, fmt, name = list(args.inputs), args.format, args.name
    if fmt is None:
        from mirec.data import registry

        if len(inputs) != 1 or inputs[0] not in registry.DATASETS:
            raise ValueError("--format is required unless the single input is a registry name (see `mirec datasets`)")
        name = name or inputs[0]
        files, fmt, registry_options = registry.resolve(inputs[0])
        inputs = [str(f) for f in files]
        reader_options = {**registry_options, **reader_options}
    if args.engine == "spark":
        from mirec.data.spark_prepare import prepare_with_spark

        prepare = partial(prepare_with_spark, spark_master=args.spark_master, layout=args.layout)
    elif args.layout != "arrays":
        raise ValueError("--layout parquet is written by --engine spark only")
    report = prepare(
        inputs,
        fmt,
        args.output,
        name=name,
        options=options,
        on_bad_rows=args.on_bad_rows,
        seed=args.seed,
        reader_options=reader_options or None,
        overwrite=args.overwrite,
        timestamp_unit=args.timestamp_unit,
        items=_item_table_options(args),
    )
    _print_json(report.to_dict())


def _item_table_options(args: argparse.Namespace) -> Any:
    """``--items FILE --item-feature NAME:KIND ...`` (None without --items)."""
    from mirec.data.features import FeatureSpec
    from mirec.data.prepare import ItemTableOptions

    if args.items is None:
        if args.item_feature or args.cold_items:
            raise ValueError("--item-feature and --cold-items need --items FILE (the item table)")
        return None
    if not args.item_feature:
        raise ValueError("--items needs at least one --item-feature NAME:KIND (categorical, multi or dense)")
    specs = tuple(FeatureSpec.parse(text) for text in args.item_feature)
    return ItemTableOptions(Path(args.items), specs, args.item_id_column, args.cold_items)


def launch_torchrun(nproc: int, argv: list[str]) -> int:
    """``mirec train --nproc N ...``: the same command under ``torchrun --standalone --nproc-per-node N`` (one
    machine; across machines run torchrun yourself with a rendezvous endpoint). Returns torchrun's status."""
    import subprocess

    rest, skip = [], False
    for arg in argv:  # drop --nproc N / --nproc=N; the workers read their rank from torchrun's environment
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.call([*command, "-m", "mirec.cli", *rest])


def cmd_train(args: argparse.Namespace) -> None:
    if args.nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        args.exit_code = launch_torchrun(args.nproc, args.argv)  # the workers print their own errors
        return
    from mirec.api import train

    overrides = [*args.set, *log_overrides(args)]
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if args.device is not None:
        overrides.append(f'train.device="{args.device}"')
    from mirec.api import preset_of, resolve_data

    preset = preset_of(resolve_data(args.data))
    print(
        f"mirec train: presets {preset}/{args.model} (from the dataset's name; `mirec config show` prints the "
        "resolved config)",
        file=sys.stderr,
    )
    metrics = train(
        args.data,
        args.model,
        args.output,
        config_file=args.config,
        overrides=overrides,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
        init_from=args.init_from,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank returns the metrics
        from mirec.console import metrics_table

        _print_result(args, metrics, metrics_table)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from mirec.api import load

    rec = load(args.run_dir, device=args.device, data=args.data)
    overrides = {name: getattr(args, name) for name in eval_flag_names() if getattr(args, name) not in (None, False)}
    if "topk" in overrides:
        overrides["topk"] = parse_int_list(overrides["topk"], "--topk")
    from mirec.console import metrics_table

    _print_result(args, rec.evaluate(args.split, dump_recs=args.dump_recs, **overrides), metrics_table)


def cmd_recommend(args: argparse.Namespace) -> None:
    if args.run_dir and args.run_option and args.run_dir != args.run_option:
        raise ValueError(f"two run folders given: {args.run_dir} and --run {args.run_option}")
    source = args.run_dir or args.run_option
    if not source:
        raise ValueError("mirec recommend needs a run folder or a bundle: mirec recommend RUN_DIR --items a,b,c")
    modes = [bool(args.items), bool(args.input), bool(args.split)]
    if sum(modes) != 1:
        raise ValueError("give exactly one of --items (one history), --input FILE or --data DIR --split SPLIT")
    from mirec.serving.bundle import is_bundle, load_serving

    if args.items:
        from mirec.serving.model import RecommendRequest, UnknownItemsError

        serving = load_serving(source, args.device, data=args.data if not is_bundle(source) else None)
        items = [s for s in args.items.split(",") if s]
        stamps = parse_int_list(args.timestamps, "--timestamps") if args.timestamps else None
        try:
            (result,) = serving.recommend(
                [RecommendRequest(items, stamps, args.n, args.exclude_history, args.diversity_lambda)]
            )
        except UnknownItemsError:
            raise ValueError(f"none of the given items is known to this model: {items[:10]}") from None
        out = {
            "recommendations": result.items,
            "scores": result.scores,
            "interests": result.interests,
            "unknown_items": result.unknown_items,
        }
        if out["unknown_items"]:
            print(f"unknown items (ignored): {','.join(out['unknown_items'])}", file=sys.stderr)
        _print_json(out)
        return
    if not args.output:
        raise ValueError("--input / --split write a Parquet file: give --output recs.parquet")
    from mirec.serving.batch import recommend_dataset, recommend_file

    serving = load_serving(source, args.device, data=args.data if not is_bundle(source) else None)
    if args.input:
        report = recommend_file(serving, args.input, args.output, n=args.n, progress=not args.quiet)
        if report["skipped_unknown"]:
            named = ", ".join(report["skipped_users"][:10]) + (", ..." if report["skipped_unknown"] > 10 else "")
            print(
                f"mirec recommend: skipped {report['skipped_unknown']} users with an empty or all-unknown history: "
                f"{named}",
                file=sys.stderr,
            )
    else:
        if not args.data:
            raise ValueError("--split needs --data DIR (the prepared dataset whose users to serve)")
        from mirec.api import resolve_data
        from mirec.data.dataset import load_dataset

        report = recommend_dataset(
            serving, load_dataset(resolve_data(args.data)), args.split, args.output, n=args.n, progress=not args.quiet
        )
    _print_json({"output": args.output, **report})


def cmd_export(args: argparse.Namespace) -> None:
    if args.items is not None:  # new items into an existing bundle
        from mirec.serving.refresh import refresh_bundle

        manifest = refresh_bundle(args.run_dir, args.items, args.output, args.item_id_column, args.overwrite)
        _print_json({k: v for k, v in manifest.items() if k != "files"})
        return
    if args.format != "bundle":  # the item table other systems load (vector databases)
        from mirec.retrieval import export_item_table

        _print_json(export_item_table(args.run_dir, args.output, args.format, args.overwrite, args.data))
        return
    from mirec.serving.bundle import export_bundle
    from mirec.serving.index import IndexParams

    params = IndexParams(
        kind=args.index,
        metric=args.metric,
        hnsw_m=args.hnsw_m,
        hnsw_ef_search=args.hnsw_ef_search,
        ivf_nlist=args.ivf_nlist,
        ivf_nprobe=args.ivf_nprobe,
        faiss_factory=args.faiss_factory,
        faiss_search=args.faiss_search,
        norm_tier=args.norm_tier,
        exact_backend=args.exact_backend,
    )
    manifest = export_bundle(
        args.run_dir, args.output, index=params, data=args.data, overwrite=args.overwrite, onnx=args.onnx
    )
    _print_json({k: v for k, v in manifest.items() if k != "files"})


def norm_tier_arg(text: str) -> float:
    """``auto`` (0: chosen at export, IndexParams' convention) or a share in (0, 1]."""
    if text == "auto":
        return 0.0
    try:
        share = float(text)
    except ValueError:
        share = math.nan  # fails the range check below
    if not 0 < share <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a share in (0, 1] or auto")
    return share


def serving_workers(args: argparse.Namespace) -> int:
    """--workers 0 (auto): one per usable CPU, at most 4, for a bundle on CPU; one for a run folder, a vector
    store (an embedded engine's file takes one process) or a GPU."""
    if args.workers:
        return args.workers
    from mirec.serving.bundle import is_bundle
    from mirec.utils import usable_cpus

    single = args.store is not None or not is_bundle(args.bundle) or args.device not in ("cpu", "auto")
    if not single and args.device == "auto":
        import torch

        single = torch.cuda.is_available()
    return 1 if single else min(4, usable_cpus())


def cmd_serve(args: argparse.Namespace) -> None:
    from mirec.retrieval import serve_from_store
    from mirec.serving.app import ServeSettings, serve

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"mirec serve: binding to {args.host}, reachable beyond this machine"
            + ("" if args.token_file else " WITHOUT authentication (--token-file)"),
            file=sys.stderr,
        )
    settings = ServeSettings(
        max_history=args.max_history,
        max_item_id_chars=args.max_item_id_chars,
        max_n=args.max_n,
        max_batch=args.max_batch,
        max_body_bytes=args.max_body_bytes,
        microbatch_size=args.microbatch_size,
        microbatch_wait_ms=args.microbatch_wait_ms,
        model_name=args.model_name,
    )
    workers = serving_workers(args)
    if workers > 1:
        from mirec.serving.app import read_token
        from mirec.serving.workers import serve_workers

        settings.token = read_token(args.token_file) if args.token_file else None
        serve_workers(
            args.bundle,
            workers=workers,
            host=args.host,
            port=args.port,
            settings=settings,
            device=args.device,
            threads=getattr(args, "threads", None) or 1,
            store=args.store,
        )
        return
    serve(
        args.bundle,
        host=args.host,
        port=args.port,
        token_file=args.token_file,
        settings=settings,
        device=args.device,
        threads=getattr(args, "threads", None) or 1,
        index_of=None if args.store is None else partial(serve_from_store, uri=args.store),
    )


def cmd_graph_stats(args: argparse.Namespace) -> None:
    from mirec.graph import GlobalContext, build_global_context, graph_stats

    if args.run_dir is not None:
        from mirec.api import load

        rec = load(args.run_dir, device="cpu")
        context = rec.model.global_context
        dataset = rec.dataset
        if context is None:
            graph_file = Path(args.run_dir) / "graph.safetensors"
            if not graph_file.exists():
                raise ValueError(f"{args.run_dir}: this run has no global context graph")
            context = GlobalContext.load(graph_file)
    else:
        from mirec.api import resolve_data
        from mirec.config import load_config
        from mirec.data.dataset import load_dataset

        dataset = load_dataset(resolve_data(args.data))
        config = load_config(args.config, overrides=list(args.set))
        context = build_global_context(dataset, config.graph)
    top_item = None
    if args.item is not None:
        index = dataset.item_index()
        if args.item not in index:
            raise ValueError(f"item {args.item!r} is not in the dataset")
        top_item = index[args.item]
    _print_json(graph_stats(context, dataset.item_original_ids, top_item=top_item, k=args.k))


def cmd_datasets(args: argparse.Namespace) -> None:
    from mirec.console import datasets_table
    from mirec.data import registry

    _print_result(args, registry.describe(), datasets_table)


def cmd_models(args: argparse.Namespace) -> None:
    from mirec.config import RECIPES, describe_options
    from mirec.console import models_table, options_table, table
    from mirec.models import MODEL_PATHS, get_model_class

    if args.name is None:
        _print_result(
            args,
            {
                **{name: get_model_class(name).paper for name in MODEL_PATHS},
                "recipes": {name: f"{base} with {', '.join(opts)}" for name, (base, opts) in RECIPES.items()},
                "which to use": "docs/results.md: test figures of every model and recipe, 3 seeds, equal budgets",
            },
            models_table,
        )
        return
    if args.name in RECIPES:
        base, opts = RECIPES[args.name]
        recipe = {"name": args.name, "recipe": {"model": base, "set": list(opts)}}
        _print_result(args, recipe, lambda r: table([[r["name"], base, " ".join(opts)]], ["recipe", "model", "set"]))
        return
    model = get_model_class(args.name)
    described = {"name": args.name, "paper": model.paper, "options": describe_options(model.config_class)}
    _print_result(args, described, lambda d: f"{d['name']}: {d['paper']}\n\n" + options_table(d["options"]))


def cmd_config_show(args: argparse.Namespace) -> None:
    from mirec.config import load_config, to_toml

    preset = "default"
    if args.data is not None:
        from mirec.api import preset_of, resolve_data

        preset = preset_of(resolve_data(args.data))
    config = load_config(args.config, model=args.model, dataset=preset, overrides=list(args.set))
    print(
        f"# presets: {preset}/{args.model}"
        + (f", then {args.config}" if args.config else "")
        + (f", then --set {' '.join(args.set)}" if args.set else "")
    )
    print(to_toml(config.to_dict()), end="")


def cmd_tune(args: argparse.Namespace) -> None:
    from mirec.experiments.tune import main_tune

    args.set = [*args.set, *log_overrides(args, shared_store=Path(args.output))]
    main_tune(args)


def cmd_bench(args: argparse.Namespace) -> None:
    from mirec.experiments.grid import main_bench

    args.log_overrides = log_overrides(args, shared_store=Path(args.output))
    main_bench(args)


def _add_item_table_args(p: argparse.ArgumentParser) -> None:
    """mirec prepare's item table: --items, --item-feature, --item-id-column, --cold-items."""
    p.add_argument(
        "--items",
        default=None,
        metavar="FILE",
        help="item table (.tsv/.csv with a header, or .parquet): side features; its items absent from the log "
        "join the catalogue as cold items",
    )
    p.add_argument(
        "--item-feature",
        action="append",
        default=[],
        metavar="NAME:KIND",
        help="a column of --items, repeated: KIND = categorical (one value), multi (a|b|c or a list), dense "
        "(a fixed-length vector: a|b|c numbers or a fixed-size list)",
    )
    p.add_argument("--item-id-column", default="item_id", help="the --items column holding the log's item ids")
    p.add_argument(
        "--cold-items",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="hold out this share of the log's items (seeded): kept only as valid/test targets (cold-start protocol)",
    )


def _add_prepare(sub: Any) -> None:
    p = sub.add_parser("prepare", help="read raw logs, clean, filter, remap, split into a prepared folder")
    p.add_argument("inputs", nargs="+", help="input files (several are merged; a folder for --format comirec)")
    p.add_argument(
        "--format",
        default=None,
        help="omit for a registry name (mirec datasets); csv, parquet, amazon-ratings, amazon-reviews, amazon-2018, "
        "taobao, movielens-dat, movielens-csv, comirec",
    )
    p.add_argument("--output", required=True, help="a new or empty folder (or, with --overwrite, a prepared dataset)")
    p.add_argument("--overwrite", action="store_true", help="replace the prepared dataset already in --output")
    p.add_argument(
        "--name",
        default=None,
        help="dataset name, which selects the presets (amazon-books, taobao-buy, "
        "...; see `mirec config show`); default: the --output folder's name",
    )
    p.add_argument("--on-bad-rows", choices=choices.ON_BAD_ROWS, default="error")
    p.add_argument("--encoding", default=None, help="text encoding of the inputs (default utf-8), e.g. latin-1")
    p.add_argument(
        "--timestamp-unit",
        choices=["auto", *choices.TIMESTAMP_UNITS],
        default="auto",
        help="unit of the timestamps (auto: detected from their magnitude; stored as seconds)",
    )
    p.add_argument(
        "--engine",
        choices=choices.PREPARE_ENGINES,
        default="embedded",
        help="spark: read, clean and filter as a Spark job (csv, parquet; needs mirec[spark]); the same folder",
    )
    p.add_argument("--spark-master", default="local[2]", help="with --engine spark: local[N], spark://HOST:PORT, ...")
    p.add_argument(
        "--layout",
        choices=choices.LAYOUTS,
        default="arrays",
        help="arrays: memory-mapped .npy; parquet (--engine spark): interactions and users written by the "
        "executors as Parquet datasets, never gathered on the driver (read into memory by train/evaluate)",
    )
    p.add_argument("--seed", type=int, default=1230, help="user-split seed (ComiRec uses 1230)")
    p.add_argument("--min-count", type=int, default=5, help="keep items, then users, with >= N interactions")
    p.add_argument("--kcore", action="store_true", help="iterate the filter to a true k-core (ComiRec: one pass)")
    p.add_argument(
        "--drop-duplicates",
        action="store_true",
        help="drop repeated (user, item, second) rows, keeping the first (ComiRec keeps them)",
    )
    p.add_argument(
        "--split",
        choices=("comirec", "loo", "temporal"),
        default="comirec",
        help="comirec: users 8:1:1, valid/test users' last 20%% are targets; loo: each user's last item is the "
        "test target and the one before it the valid target (SASRec's protocol); temporal: global time cuts",
    )
    p.add_argument(
        "--temporal-cuts",
        default="0.8,0.9",
        metavar="V,T",
        help="--split temporal: the valid and test cuts, as fractions of --temporal-cut-by",
    )
    p.add_argument(
        "--temporal-cut-by",
        choices=("interactions", "time"),
        default="interactions",
        help="interactions: the times by which those shares of the rows had happened; time: of the time range",
    )
    _add_item_table_args(p)
    p.add_argument("--min-timestamp", type=int, default=None)
    p.add_argument("--max-timestamp", type=int, default=None)
    p.add_argument("--behaviors", default=None, help="taobao: behaviours to keep, e.g. buy, pv,cart or all")
    p.add_argument(
        "--reader-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a reader option, repeated per key: --reader-option delimiter=, --reader-option header=true "
        "--reader-option user=0 --reader-option item=1 --reader-option timestamp=3",
    )
    p.set_defaults(func=cmd_prepare)


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a model; ends with a test evaluation and writes metrics.json")
    p.add_argument("--data", required=True, help="prepared folder, or 'amazon-grocery' (bundled)")
    p.add_argument("--model", required=True)
    p.add_argument("--output", required=True, help="run folder")
    p.add_argument("--config", default=None, help="TOML file applied over the preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=0.005")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="auto | cpu | cuda")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument(
        "--init-from",
        default=None,
        metavar="RUN_DIR",
        help="a new run starting from RUN_DIR's best weights (items remapped by original id; fresh optimiser)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the earlier run in --output (its files and checkpoints; nothing else)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="data-parallel processes on this machine (torchrun + DDP; gloo on CPU, NCCL on CUDA)",
    )
    add_log_argument(p)
    p.set_defaults(func=cmd_train)


TRAINING_ONLY_EVAL = ("base_share_grid", "early_stop_metric")  # chosen at training; evaluate takes the rest


def eval_flag_names() -> list[str]:
    """The [eval] options `mirec evaluate` takes as flags (--name-with-dashes), read from the config type."""
    from mirec.config import EvalConfig

    return [f.name for f in dataclasses.fields(EvalConfig) if f.name not in TRAINING_ONLY_EVAL]


def add_eval_flags(p: argparse.ArgumentParser) -> None:
    """One flag per [eval] option: its type, its choices and its description come from EvalConfig."""
    from mirec.config import EvalConfig
    from mirec.config.models import option_descriptions

    hints, described = typing.get_type_hints(EvalConfig), option_descriptions(EvalConfig)
    for name in eval_flag_names():
        flag, hint, doc = "--" + name.replace("_", "-"), hints[name], described.get(name, "")
        if hint is bool:
            p.add_argument(flag, action="store_true", default=None, help=doc)
        elif typing.get_origin(hint) is typing.Literal:
            p.add_argument(flag, choices=list(typing.get_args(hint)), default=None, help=doc)
        elif hint in (int, float):
            p.add_argument(flag, type=hint, default=None, help=doc)
        else:  # lists: comma-separated
            p.add_argument(flag, default=None, help=f"{doc} (comma-separated)")


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="evaluate a run on a split, print the metrics as JSON")
    p.add_argument("run_dir")
    p.add_argument("--split", choices=choices.EVAL_SPLITS, default="test")
    p.add_argument("--dump-recs", default=None, metavar="FILE.jsonl")
    add_eval_flags(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--data", default=None, metavar="DIR", help="the run's prepared dataset, if it has moved")
    p.set_defaults(func=cmd_evaluate)


def _add_recommend(sub: Any) -> None:
    p = sub.add_parser("recommend", help="top-N items (original ids) for one history, a file of them, or a dataset")
    p.add_argument("run_dir", nargs="?", default=None, metavar="RUN_DIR|BUNDLE")
    p.add_argument("--run", dest="run_option", default=None, metavar="RUN_DIR", help="same as the positional RUN_DIR")
    p.add_argument("--items", default=None, help="one history: comma-separated original item ids, oldest first")
    p.add_argument("--timestamps", default=None, help="comma-separated Unix seconds, one per item")
    p.add_argument(
        "--input", default=None, metavar="FILE", help="histories.parquet or .jsonl (user, history[, timestamps])"
    )
    p.add_argument(
        "--split",
        default=None,
        choices=choices.RECOMMEND_SPLITS,
        help="with --data: every user of that split of a prepared dataset",
    )
    p.add_argument("--output", default=None, metavar="RECS.parquet", help="rows user, rank, item, score, interest")
    p.add_argument("-n", type=int, default=50)
    p.add_argument("--exclude-history", action="store_true")
    p.add_argument("--diversity-lambda", type=float, default=0.0)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="the run's prepared dataset (if moved), or the users' one with --split",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_recommend)


def _add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="a self-contained bundle of a trained run, or its item table for a vector DB")
    p.add_argument("run_dir", metavar="RUN_DIR|BUNDLE")
    p.add_argument("--output", required=True, metavar="FOLDER")
    p.add_argument(
        "--format",
        choices=("bundle", "parquet", "csv"),
        default="bundle",
        help="bundle: weights, id map, index; parquet / csv: the item table (item_id, vector, norm, category) "
        "with vectors.json, for Milvus bulk_import, PostgreSQL COPY and other vector databases",
    )
    p.add_argument("--index", choices=choices.INDEX_KINDS, default="exact")
    p.add_argument(
        "--metric",
        choices=choices.INDEX_METRICS,
        default="auto",
        help="ANN on inner product, on the inner-product-to-L2 transform, or auto: whichever agrees more "
        "with exact search on the run's validation users",
    )
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument(
        "--hnsw-ef-search",
        type=int,
        default=0,
        help="0 = the smallest of 64..1024 reaching 0.97 overlap on validation users",
    )
    p.add_argument("--ivf-nlist", type=int, default=0, help="0 = 4 sqrt(items)")
    p.add_argument("--ivf-nprobe", type=int, default=0, help="0 = max(8, nlist / 16)")
    p.add_argument(
        "--faiss-factory",
        default="",
        metavar="STRING",
        help="--index faiss: a Faiss index_factory string, e.g. IVF4096_HNSW32,PQ32x4fs,RFlat",
    )
    p.add_argument(
        "--faiss-search",
        default="",
        metavar="K=V,...",
        help="--index faiss: search settings, e.g. nprobe=32,k_factor_rf=4",
    )
    p.add_argument(
        "--norm-tier",
        type=norm_tier_arg,
        default="1",
        metavar="SHARE|auto",
        help="index only this share of the items, largest norms first (its overlap with exact search on validation "
        "users goes into the manifest); auto, with --index exact: the smallest share of 0.5..0.05 reaching 0.97",
    )
    p.add_argument(
        "--exact-backend",
        choices=choices.EXACT_BACKENDS,
        default="auto",
        help="--index exact: auto = Faiss's flat search for calls of >= 2,048 interest queries, torch below",
    )
    p.add_argument("--onnx", action="store_true", help="also export the user tower to ONNX (needs mirec[onnx])")
    p.add_argument(
        "--items",
        default=None,
        metavar="FILE",
        help="with a BUNDLE whose model pools item features: add the items of this table it does not hold, "
        "embedded from their features, as a new bundle version in --output (the bundle itself with --overwrite)",
    )
    p.add_argument("--item-id-column", default="item_id", help="the --items column holding the item ids")
    p.add_argument("--data", default=None, metavar="DIR", help="the run's prepared dataset, if it has moved")
    p.add_argument("--overwrite", action="store_true", help="replace the bundle already in --output")
    p.set_defaults(func=cmd_export)


def _add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="HTTP service of a bundle (needs mirec[serve]); loopback by default")
    p.add_argument("bundle", metavar="BUNDLE|RUN_DIR")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--token-file",
        default=None,
        help="bearer token required on every route but /healthz, /readyz; without one, /admin routes are off",
    )
    p.add_argument("--max-history", type=int, default=1000)
    p.add_argument("--max-item-id-chars", type=int, default=256, help="longest item id a request may hold")
    p.add_argument("--max-n", type=int, default=1000)
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    p.add_argument("--microbatch-size", type=int, default=64)
    p.add_argument("--microbatch-wait-ms", type=float, default=2.0)
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="worker processes on the one port, each computing requests in parallel (bundles only); 0 = one per "
        "CPU up to 4 on CPU, 1 with --store, a run folder or a GPU",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--model-name", default="mirec", help="the model's name on the Open Inference Protocol routes")
    p.add_argument(
        "--store",
        default=None,
        metavar="URI",
        help="search a vector database instead of the bundle's index: milvus:///file.db, milvus://host:port, "
        "qdrant:///folder, qdrant://host:port, postgresql://... (loaded with the bundle's items if needed)",
    )
    p.set_defaults(func=cmd_serve)


def _add_graph_stats(sub: Any) -> None:
    p = sub.add_parser("graph-stats", help="inspect a global-context graph (of a run, or built from data)")
    p.add_argument("run_dir", nargs="?", default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--config", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--item", default=None, help="original id of an item whose top neighbours to list")
    p.add_argument("-k", type=int, default=10)
    p.set_defaults(func=cmd_graph_stats)


def _add_bench(sub: Any) -> None:
    p = sub.add_parser("bench", help="resumable grid of runs (variants x datasets x seeds) and result tables")
    p.add_argument("--data", action="append", required=True, metavar="NAME=DIR", help="prepared datasets")
    p.add_argument(
        "--grid",
        default=None,
        metavar="NAME|FILE.toml",
        help="a grid spec: shipped (gimirec-main, gimirec-ablation, gimirec-k, ...) or a TOML file",
    )
    p.add_argument("--models", default=None, help="comma-separated model names (each a variant of its own)")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=MODEL[:k=v;k=v]",
        help="a named configuration, e.g. gimirec-I=gimirec:graph.a=0;graph.b=1",
    )
    p.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=v1,v2,...",
        help="one variant per value for every base variant, e.g. model.num_interests=1,2,4,8",
    )
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the grid's, else 1,2,3)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every cell")
    p.add_argument("--config", default=None, metavar="FILE.toml", help="applied over the presets of every cell")
    p.add_argument("--budget-minutes", type=float, default=None, help="wall-clock budget per cell (0 = none)")
    p.add_argument("--jobs", type=int, default=None, help="cells trained at once (default 1)")
    p.add_argument("--topk", default="20,50")
    p.add_argument("--output", required=True)
    p.add_argument("--tables-only", action="store_true", help="only collect finished cells into tables")
    p.add_argument("--plots", action="store_true", help="also write PNG plots to OUTPUT/plots (needs mirec[plot])")
    add_log_argument(p)
    p.set_defaults(func=cmd_bench)


def _add_tune(sub: Any) -> None:
    p = sub.add_parser(
        "tune", help="hyper-parameter search with Optuna on the valid split (needs mirec[tune]); never reads test"
    )
    p.add_argument("--data", required=True, help="prepared folder, or 'amazon-grocery' (bundled)")
    p.add_argument("--model", required=True)
    p.add_argument(
        "--space", required=True, metavar="SPACE.toml", help='[space] "train.lr" = {low=.., high=.., log=true}'
    )
    p.add_argument("--trials", type=int, required=True, help="finished (complete or pruned) trials the study ends with")
    p.add_argument("--output", required=True, help="folder: trials/NNNN run folders, study.db, best.toml, trials.md")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///OUTPUT/study.db)")
    p.add_argument("--study", default=None, help="study name (default: the --output folder's name)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes sharing the study")
    p.add_argument("--budget-minutes", type=float, default=0.0, help="wall-clock budget of this tuning session")
    p.add_argument("--seed", type=int, default=None, help="sampler seed and every trial's train.seed")
    p.add_argument("--config", default=None, help="TOML file applied over the presets for every trial")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fixed for every trial")
    p.add_argument("--sampler", choices=choices.TUNE_SAMPLERS, default="tpe")
    p.add_argument("--pruner", choices=choices.TUNE_PRUNERS, default="median")
    p.add_argument("--startup-trials", type=int, default=5, help="trials before TPE models and the pruner prunes")
    p.add_argument(
        "--prune-after-evals",
        type=int,
        default=3,
        help="evaluations a trial always gets before the median pruner may stop it (early values are noisy)",
    )
    p.add_argument(
        "--baseline-trial",
        action="store_true",
        help="trial 0 runs the preset's (and --config/--set's) own values of the searched options",
    )
    p.add_argument("--plots", action="store_true", help="optimisation history and parameter importances (mirec[plot])")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    add_log_argument(p)
    p.set_defaults(func=cmd_tune)


def _add_datasets(sub: Any) -> None:
    p = sub.add_parser("datasets", help="the dataset registry: names, sources, where to put files offline")
    p.set_defaults(func=cmd_datasets)


def _add_models(sub: Any) -> None:
    p = sub.add_parser("models", help="the model zoo; with a NAME, that model's options, defaults and choices")
    p.add_argument("name", nargs="?", default=None)
    p.set_defaults(func=cmd_models)


def _add_config(sub: Any) -> None:
    p = sub.add_parser("config", help="`mirec config show`: the resolved config a `mirec train` would use")
    p.add_argument("action", choices=["show"])
    p.add_argument("--model", required=True)
    p.add_argument(
        "--data", default=None, help="prepared folder (its name selects the presets); default presets without"
    )
    p.add_argument("--config", default=None, help="TOML file applied over the preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_config_show)


COMMANDS = (
    _add_prepare,
    _add_train,
    _add_evaluate,
    _add_recommend,
    _add_export,
    _add_serve,
    _add_graph_stats,
    _add_bench,
    _add_tune,
    _add_datasets,
    _add_models,
    _add_config,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``mirec`` parser: one small function per command (``COMMANDS``), ``--threads`` accepted after each."""
    parser = argparse.ArgumentParser(prog="mirec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(sub)
    for subparser in sub.choices.values():  # accepted after the subcommand too
        subparser.add_argument("--threads", type=int, default=argparse.SUPPRESS, help=THREADS_HELP)
    for name in ("train", "evaluate", "models", "datasets"):  # a table at a terminal, JSON otherwise
        sub.choices[name].add_argument("--json", action="store_true", help="print JSON even at a terminal")
    return parser


THREADS_HELP = "torch CPU threads (default: torch's choice)"


def add_log_argument(parser: argparse.ArgumentParser) -> None:
    """``--log tensorboard|mlflow`` (repeatable or comma-separated): ``--set train.log_to=...`` for every run."""
    parser.add_argument(
        "--log",
        action="append",
        default=[],
        metavar="tensorboard|mlflow",
        help="mirror each run in TensorBoard and/or MLflow (train.log_to; needs mirec[track])",
    )


def log_overrides(args: argparse.Namespace, shared_store: Path | None = None) -> list[str]:
    """``train.log_to`` from ``--log``; with ``shared_store`` (bench, tune) and MLflow on, the runs share one
    SQLite store OUTPUT/mlflow.db unless a tracking URI is given (``--set train.tracking_uri``, the env)."""
    names = [name.strip() for text in getattr(args, "log", []) for name in text.split(",") if name.strip()]
    out = [f'train.log_to="{",".join(dict.fromkeys(names))}"'] if names else []
    from mirec.config import parse_override

    given = any(parse_override(text)[0][-1] == "tracking_uri" for text in args.set)
    if shared_store is not None and "mlflow" in names and not given and not os.environ.get("MLFLOW_TRACKING_URI"):
        out.append(f'train.tracking_uri="sqlite:///{shared_store.resolve() / "mlflow.db"}"')
    return out


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0, 1 with a one-line reason on stderr, 130 on Ctrl-C)."""
    parser = build_parser()
    parser.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.command == "graph-stats" and (args.run_dir is None) == (args.data is None):
        parser.error("graph-stats needs a RUN_DIR or --data DIR (one of them)")
    previous_showwarning = warnings.showwarning
    warnings.showwarning = partial(_one_line_warning, args.command)
    try:
        args.func(args)
    except BrokenPipeError:  # the reader went away (`mirec models | head`): nothing left to say
        return 141
    except KeyboardInterrupt:
        print(f"mirec {args.command}: interrupted (a training run continues with --resume)", file=sys.stderr)
        return 130
    except Exception as exc:  # one-line reason on stderr, non-zero status (the CLI contract)
        if "MIREC_DEBUG" in os.environ:
            raise
        reason = " ".join(str(exc).split()) or "(no message)"
        print(f"mirec {args.command}: error: {type(exc).__name__}: {reason}", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = previous_showwarning
    return int(getattr(args, "exit_code", 0))


def _one_line_warning(command: str, message: Any, category: type, filename: str, lineno: int, *rest: Any) -> None:
    """A warning as one line on stderr (not the source path and code line Python prints)."""
    text = " ".join(str(message).split())
    print(f"mirec {command}: warning: {text}", file=sys.stderr)


def console_main() -> None:
    """The ``mirec`` console script: :func:`main`, then an immediate exit once the output is flushed.

    Exiting through the interpreter's teardown could end in "terminate called without an active exception"
    (exit 134) when native thread pools (pyarrow's, torch's) were still alive; ``os._exit`` after flushing
    gives the status main() chose, every time. Nothing of ours needs teardown: outputs are written atomically
    and locks are released by the kernel."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code)


if __name__ == "__main__":
    console_main()
