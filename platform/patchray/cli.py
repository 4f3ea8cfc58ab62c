"""The ``patchray`` command line: thin wrappers that parse, configure and call the library.

    patchray demo [--config jobs/demo.yaml] [--set train.epochs=3 ...] [--keep-serving]
    patchray train --config jobs/idc.yaml [--set data.root=s3://bucket/idc ...]
    patchray tune --config jobs/tune-demo.yaml [--then-train]
    patchray evaluate lopo --config jobs/lopo.yaml [--set lopo.seeds=[0,1] ...]
    patchray serve NAME[@VERSION|@ALIAS] | DIR [--precision auto] [--port 8000]
    patchray registry [--registry URI] list | show REF | promote NAME V --to ALIAS |
                      rollback NAME --alias ALIAS | verify REF
    patchray keys [--store URI] create CLIENT | list [--json] | revoke KEY_ID
    patchray audit [--dir DIR] [--since 2h] [--until T] [--client C] [--model NAME]
                   [--model-version V] [--outcome O] [--limit N] [--json]
    patchray models [PATTERN]
    patchray bench infer [--quick] [--out runs/bench]
    patchray ingest idc|pcam|folder SRC --out URI [--encoding png|raw] [--split-map P=train,...]
    patchray dataset show URI [--out sheet.png]
    patchray dataset validate URI
    patchray slide tile SLIDE... --out URI [--patients FILE] [--masks DIR] [--split-map ...]
    patchray slide predict SLIDE... --model NAME@ALIAS|DIR --out DIR [--registry URI]
    patchray submit [--address URL] [--working-dir DIR] [--env NAME=VALUE] [--installed]
                    [--no-wait] [--submission-id ID] COMMAND [ARGS...]   (any command above)
    patchray jobs list | status ID | logs ID [--follow] | stop ID   [--address URL]

On the terminal: patchray's own progress; Ray's and TensorFlow's logs go to
``<run>/logs/patchray.log`` (``--verbose`` shows them too).

Exit status: 0 success; 1 an unexpected error (traceback in the log); 2 usage, config or
data errors; 3 ingest wrote the dataset but rejected some inputs (listed in
ingest_report.csv beside the manifest); 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from patchray.errors import PatchrayError
from patchray.logs import LOG_NAME, RunOutput, configure_terminal

log = logging.getLogger("patchray.cli")

DEFAULT_SPEC = Path(__file__).resolve().parents[2] / "jobs" / "demo.yaml"


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML job spec (default: built-in defaults)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key, e.g. --set train.epochs=3 (repeatable)",
    )
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show Ray's and TensorFlow's logs on the terminal too (they otherwise "
                        "go to <run>/logs/patchray.log)")


def _wait_for_interrupt(message: str) -> None:
    log.info(message)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()


def cmd_demo(args: argparse.Namespace) -> int:
    from patchray import runtime
    from patchray.config import DemoConfig, load_config
    from patchray.workflows.demo import new_run_dir, run_demo

    spec = args.config or (str(DEFAULT_SPEC) if DEFAULT_SPEC.is_file() else None)
    cfg = load_config(spec, args.overrides, model=DemoConfig)
    run_dir = new_run_dir(cfg)
    with RunOutput(run_dir / "logs" / LOG_NAME, verbose=args.verbose):
        result = run_demo(cfg, run_dir=run_dir, shutdown=not args.keep_serving)
        if args.keep_serving:
            _wait_for_interrupt(f"serving at {result.service_url} until Ctrl-C")
            runtime.shutdown(serve=True)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from patchray.config import TrainJobConfig, load_config
    from patchray.workflows.train import run_dir_of, run_train_job

    cfg = load_config(args.config, args.overrides, model=TrainJobConfig)
    with RunOutput(run_dir_of(cfg) / "logs" / LOG_NAME, verbose=args.verbose):
        run_train_job(cfg)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from patchray.config import TuneJobConfig, load_config
    from patchray.workflows.train import run_dir_of
    from patchray.workflows.tune import run_tune_job

    cfg = load_config(args.config, args.overrides, model=TuneJobConfig)
    with RunOutput(run_dir_of(cfg) / "logs" / LOG_NAME, verbose=args.verbose):
        run_tune_job(cfg, then_train=args.then_train)
    return 0


def cmd_evaluate_lopo(args: argparse.Namespace) -> int:
    from patchray.config import LopoJobConfig, load_config
    from patchray.workflows.lopo import run_lopo_job
    from patchray.workflows.train import run_dir_of

    cfg = load_config(args.config, args.overrides, model=LopoJobConfig)
    with RunOutput(run_dir_of(cfg) / "logs" / LOG_NAME, verbose=args.verbose):
        run_lopo_job(cfg)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from patchray import runtime
    from patchray.config import ServeJobConfig, load_config
    from patchray.serving.launch import service_args, start_service

    overrides = [f"serve.port={args.port}"]
    if args.precision:
        overrides.append(f"serve.precision={args.precision}")
    cfg = load_config(args.config, args.overrides + overrides, model=ServeJobConfig)
    with RunOutput(Path(cfg.runs_root).resolve() / "serve" / "logs" / LOG_NAME,
                   verbose=args.verbose):
        served = service_args(cfg.serve, model=args.model, registry=args.registry or "",
                              runs_root=cfg.runs_root)
        runtime.init_ray(cfg.ray, metrics_port=cfg.serve.metrics_port)
        url = start_service(cfg.serve, served)
        _wait_for_interrupt(
            f"serving {args.model} at {url}/v1/classify and {url}/v2 (KServe); API keys: "
            f"patchray keys --store {served.keys} create CLIENT; metrics on "
            f"http://127.0.0.1:{cfg.serve.metrics_port}/metrics; Ctrl-C to stop"
        )
        runtime.shutdown(serve=True)
    return 0


def _registry(args: argparse.Namespace) -> Any:
    from patchray.registry.store import ModelRegistry, default_root

    return ModelRegistry(args.registry or default_root())


def cmd_registry_list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    names = registry.names()
    if not names:
        print(f"{registry.root}: no models registered")
        return 0
    print(f"{'model':<28} {'versions':<12} {'latest':>6}  {'serving':<7} aliases")
    for name in names:
        versions = registry.versions(name)
        latest = registry.card(name, versions[-1])
        aliases = ", ".join(f"{a}={r.version}" for a, r in sorted(registry.aliases(name).items()))
        shown = ",".join(map(str, versions[-5:])) + (",..." if len(versions) > 5 else "")
        print(f"{name:<28} {shown:<12} {versions[-1]:>6}  {latest.serving_precision:<7} "
              f"{aliases or '-'}")
    return 0


def cmd_registry_show(args: argparse.Namespace) -> int:
    registry = _registry(args)
    card = registry.resolve(args.ref)
    if args.json:
        print(card.model_dump_json(indent=2))
        return 0
    aliases = [a for a, r in registry.aliases(card.name).items() if r.version == card.version]
    print(f"{card.ref}  ({', '.join(aliases) or 'no alias'})  {registry.uri(card.name, card.version)}")
    print(f"  {card.architecture} on {card.dataset}; created {card.created}; code "
          f"{card.code_revision}; input {card.input.size}px")
    for e in card.evidence:
        print(f"  {e.split}: {len(e.patients)} patient{'' if len(e.patients) == 1 else 's'}, "
              f"{e.patches} patches")
    print(f"  {'precision':<9} {'val AUC':>8} {'drop':>8} {'threshold':>9} {'test AUC':>8} "
          f"{'sens':>6} {'spec':>6} {'img/s':>7}  gate")
    for name, r in card.precisions.items():
        if not r.available:
            print(f"  {name:<9} not available: {r.reason}")
            continue
        mark = "pass" + (" (serving default)" if name == card.serving_precision else "") \
            if r.passed else f"FAIL: {r.reason}"
        print(f"  {name:<9} {r.val_auc:>8.4f} {r.auc_drop:>+8.4f} {r.threshold:>9.4f} "
              f"{r.test.get('auc') or float('nan'):>8.4f} "
              f"{r.test.get('sensitivity') or float('nan'):>6.3f} "
              f"{r.test.get('specificity') or float('nan'):>6.3f} {r.images_per_s or 0:>7.0f}"
              f"  {mark}")
    for limit in card.limitations:
        print(f"  limit: {limit}")
    return 0


def cmd_registry_promote(args: argparse.Namespace) -> int:
    registry = _registry(args)
    before = registry.alias(args.name, args.to)
    record = registry.promote(args.name, args.version, args.to)
    print(f"{args.name}@{args.to}: {before.version if before else '(new)'} -> {record.version}")
    return 0


def cmd_registry_rollback(args: argparse.Namespace) -> int:
    registry = _registry(args)
    before = registry.alias(args.name, args.alias)
    record = registry.rollback(args.name, args.alias)
    print(f"{args.name}@{args.alias}: {before.version if before else '-'} -> {record.version} "
          "(rolled back)")
    return 0


def cmd_registry_verify(args: argparse.Namespace) -> int:
    registry = _registry(args)
    card = registry.resolve(args.ref)
    files = registry.verify(card.name, card.version)
    print(f"{card.ref}: ok: {len(files)} files match the sha256 in its card")
    return 0


def _add_registry_commands(sub: Any) -> None:
    reg = sub.add_parser("registry", help="registered models: list, show, promote, rollback, "
                                          "verify")
    reg.add_argument("--registry", metavar="URI",
                     help="registry root, local path or s3://bucket/prefix (default "
                          "$PATCHRAY_REGISTRY, else ./registry)")
    rsub = reg.add_subparsers(dest="registry_command", required=True)
    ls = rsub.add_parser("list", help="every model, its versions and aliases")
    ls.set_defaults(func=cmd_registry_list)
    show = rsub.add_parser("show", help="a version's card: precisions, thresholds, metrics")
    show.add_argument("ref", metavar="NAME[@VERSION|@ALIAS]")
    show.add_argument("--json", action="store_true", help="print card.json")
    show.set_defaults(func=cmd_registry_show)
    promote = rsub.add_parser("promote", help="point an alias at a version (verified first)")
    promote.add_argument("name")
    promote.add_argument("version", type=int)
    promote.add_argument("--to", required=True, metavar="ALIAS", help="e.g. production")
    promote.set_defaults(func=cmd_registry_promote)
    rollback = rsub.add_parser("rollback", help="point an alias back at its previous version")
    rollback.add_argument("name")
    rollback.add_argument("--alias", required=True)
    rollback.set_defaults(func=cmd_registry_rollback)
    verify = rsub.add_parser("verify", help="check every file's sha256 against the card")
    verify.add_argument("ref", metavar="NAME[@VERSION|@ALIAS]")
    verify.set_defaults(func=cmd_registry_verify)


def _key_store(args: argparse.Namespace) -> Any:
    from patchray.serving.keys import KeyStore, default_keys_uri

    return KeyStore(args.store or default_keys_uri())


def cmd_keys_create(args: argparse.Namespace) -> int:
    store = _key_store(args)
    record, token = store.create(args.client)
    print(token)
    print(f"key {record.key_id} for client {record.client!r} in {store.uri}: the key above is "
          "not stored (only its hash) and cannot be shown again", file=sys.stderr)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    import json

    store = _key_store(args)
    rows = [r.model_dump(mode="json", exclude={"sha256"}) for r in store.list()]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    if not rows:
        print(f"{store.uri}: no keys")
        return 0
    print(f"{'key_id':<8}  {'client':<24} {'created':<20}  revoked")
    for row in rows:
        print(f"{row['key_id']:<8}  {row['client']:<24} {row['created']:<20}  "
              f"{row['revoked'] or '-'}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    record = _key_store(args).revoke(args.key_id).model_dump(mode="json")
    print(f"key {record['key_id']} ({record['client']}) revoked at {record['revoked']}; "
          "replicas refuse it within serve.keys_refresh_s")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from patchray.serving.audit import default_audit_dir, format_table, parse_time, query_audit

    records = query_audit(
        args.dir or default_audit_dir(),
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until) if args.until else None, client=args.client,
        model_version=args.model_version, model=args.model, outcome=args.outcome,
        limit=args.limit)
    if args.json:
        for r in records:
            print(r.model_dump_json())
    elif records:
        print(format_table(records))
    else:
        print("no audit records match")
    return 0


def _add_service_commands(sub: Any) -> None:
    keys = sub.add_parser("keys", help="API keys of the service's clients: create, list, revoke")
    keys.add_argument("--store", metavar="URI", help="key store, local path or s3://... (default "
                      "$PATCHRAY_KEYS, else runs/service/keys.json)")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    create = ksub.add_parser("create", help="a new key for a client (shown once)")
    create.add_argument("client", help="1-64 letters, digits, '.', '_', '-'")
    create.set_defaults(func=cmd_keys_create)
    ls = ksub.add_parser("list", help="key ids, clients, created and revoked (never hashes)")
    ls.add_argument("--json", action="store_true", help="JSON lines")
    ls.set_defaults(func=cmd_keys_list)
    revoke = ksub.add_parser("revoke", help="refuse a key from now on (403)")
    revoke.add_argument("key_id", help="8 hex characters, as in keys list")
    revoke.set_defaults(func=cmd_keys_revoke)

    audit = sub.add_parser("audit", help="the service's audit records, merged over replicas",
                           description="Query the audit records every replica appended. T is "
                                       "ISO-8601 (naive = UTC) or an age: 30s, 15m, 2h, 1d.")
    audit.add_argument("--dir", help="audit folder (default $PATCHRAY_AUDIT, else "
                       "runs/service/audit)")
    audit.add_argument("--since", metavar="T", help="from this time or age, e.g. 2h")
    audit.add_argument("--until", metavar="T", help="up to this time or age")
    audit.add_argument("--client")
    audit.add_argument("--model", metavar="NAME")
    audit.add_argument("--model-version", metavar="V")
    audit.add_argument("--outcome", metavar="O", help="ok or an error kind")
    audit.add_argument("--limit", type=int, metavar="N", help="only the most recent N")
    audit.add_argument("--json", action="store_true", help="JSON lines, one record each")
    audit.set_defaults(func=cmd_audit)


def cmd_models(args: argparse.Namespace) -> int:
    from patchray.models import describe_models

    rows = describe_models(args.pattern)
    print(f"{'name':<20} {'family':<12} {'input':>5} {'min':>4} {'params':>12}  description")
    for r in rows:
        print(f"{r['name']:<20} {r['family']:<12} {r['default_input_size']:>5} "
              f"{r['min_input_size']:>4} {r['params']:>12,}  {r['description']}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from patchray.benchmarks.__main__ import main as bench_main

    return bench_main([args.name, *args.bench_args])


# These start Ray: their output goes through RunOutput.
RUN_COMMANDS = ("demo", "train", "tune", "serve", "evaluate")
EXIT_REJECTED = 3  # ingest finished, but some inputs were refused (see the ingest report)
REJECTIONS_SHOWN = 10


def cmd_ingest(args: argparse.Namespace) -> int:
    from patchray.config import load_config
    from patchray.data.ingest import ingest_source
    from patchray.data.report import REPORT_CSV
    from patchray.data.show import format_summary
    from patchray.data.sources import create_source
    from patchray.data.splits import parse_split_map

    data = load_config(args.config, args.overrides).data
    source = create_source(args.kind, args.src, classes=args.classes,
                           patient_regex=args.patient_regex, unlabelled=args.unlabelled)
    result = ingest_source(
        source, args.out, train=data.split.train, val=data.split.val, seed=data.split.seed,
        rows_per_file=data.rows_per_file, split_map=parse_split_map(args.split_map),
        encoding=args.encoding or data.encoding, workers=args.workers or os.cpu_count() or 1,
    )
    print(format_summary(args.out, result.manifest))
    rejected = result.report.rejected
    if not rejected:
        return 0
    print(f"{len(rejected)} inputs rejected (all in {args.out.rstrip('/')}/{REPORT_CSV}):")
    for file, reason in rejected[:REJECTIONS_SHOWN]:
        print(f"  {file}: {reason}")
    if len(rejected) > REJECTIONS_SHOWN:
        print(f"  ... +{len(rejected) - REJECTIONS_SHOWN} more")
    return EXIT_REJECTED


def cmd_dataset_show(args: argparse.Namespace) -> int:
    from patchray.data.show import show_dataset

    print(show_dataset(args.uri, out=args.out, all_patients=args.all_patients).text)
    return 0


def cmd_dataset_validate(args: argparse.Namespace) -> int:
    from patchray.data.validate import validate_dataset

    summary = validate_dataset(args.uri)
    print(f"{args.uri}: ok: {summary['rows']} rows in {summary['files']} files; page checksums, "
          f"counts, patient-disjoint splits and content hash {summary['content_sha256'][:12]} "
          "match the manifest")
    return 0


def _add_data_commands(sub: Any) -> None:
    ingest = sub.add_parser(
        "ingest", help="ingest patches to a Parquet dataset split by patient",
        description="Ingest an IDC tree, PatchCamelyon .h5 files or class folders into a "
                    "Parquet dataset split by patient. Split fractions, seed and file size "
                    "come from the job config (--config, or --set data.split.seed=1 --set "
                    "data.rows_per_file=1000).",
    )
    ingest.add_argument("kind", choices=["idc", "pcam", "folder"], help="source layout")
    ingest.add_argument("src", help="source folder (local)")
    ingest.add_argument("--out", required=True,
                        help="dataset root: local path or s3://bucket/prefix")
    ingest.add_argument("--split-map", metavar="P=SPLIT,...",
                        help="assign every patient explicitly, e.g. 10253=train,8975=val "
                             "(needed below 3 patients)")
    ingest.add_argument("--classes", metavar="FOLDER=LABEL,...",
                        help="folder: class folder -> 0/1, e.g. benign=0,tumour=1 (default "
                             "maps 0/1, benign/normal/negative -> 0, tumour/tumor/malignant/"
                             "positive -> 1)")
    ingest.add_argument("--patient-regex", metavar="REGEX",
                        help="folder: regex on the file name; group 'patient' (or the first "
                             "group) is the patient id, optional groups slide, x, y")
    ingest.add_argument("--encoding", choices=["png", "raw"],
                        help="how Parquet holds pixels: png (default) or raw uint8 (no "
                             "decoding, for GPU workers; ~18%% larger on IDC)")
    ingest.add_argument("--workers", type=int, metavar="N",
                        help="processes that decode and encode (default: one per core); "
                             "the output is the same for any N")
    ingest.add_argument("--unlabelled", action="store_true",
                        help="folder: patches without labels, written to split 'unlabelled'")
    _config_args(ingest)
    ingest.set_defaults(func=cmd_ingest)

    dataset = sub.add_parser("dataset", help="inspect an ingested dataset")
    dsub = dataset.add_subparsers(dest="dataset_command", required=True)
    show = dsub.add_parser("show", help="counts per split/label/patient and a contact sheet")
    show.add_argument("uri", help="dataset root: local path or s3://bucket/prefix")
    show.add_argument("--out", help="contact sheet PNG (default: URI/contact_sheet.png)")
    show.add_argument("--all-patients", action="store_true", help="list every patient")
    show.set_defaults(func=cmd_dataset_show)
    validate = dsub.add_parser("validate", help="read every page (CRC) and recount vs the manifest")
    validate.add_argument("uri", help="dataset root: local path or s3://bucket/prefix")
    validate.set_defaults(func=cmd_dataset_validate)


def cmd_slide_tile(args: argparse.Namespace) -> int:
    from patchray import runtime
    from patchray.config import SlideTileJobConfig, load_config
    from patchray.data.show import format_summary
    from patchray.data.splits import parse_split_map
    from patchray.slides.inputs import resolve_slide_inputs
    from patchray.slides.jobs import THUMBNAILS, run_tile_job

    overrides = list(args.overrides or [])
    if args.context_scale is not None:
        overrides.append(f"context_scale={args.context_scale}")
    cfg = load_config(args.config, overrides, model=SlideTileJobConfig)
    slides = resolve_slide_inputs(args.slides, patients=args.patients, masks=args.masks,
                                  missing_mask=cfg.ingest.missing_mask)
    try:
        result = run_tile_job(slides, args.out, cfg, split_map=parse_split_map(args.split_map))
    finally:
        runtime.shutdown()
    print(format_summary(args.out, result.manifest))
    for r in result.manifest.source.get("slides", []):
        tumour = "" if r["tumour_tiles"] is None else f", {r['tumour_tiles']} tumour"
        print(f"  {r['slide_id']} (patient {r['patient_id']}): {r['tiles']} tiles{tumour} of "
              f"{r['windows']} windows")
    print(f"thumbnails with the tile grid: {args.out.rstrip('/')}/{THUMBNAILS}/")
    return EXIT_REJECTED if result.report.rejected else 0


def cmd_slide_predict(args: argparse.Namespace) -> int:
    from patchray import runtime
    from patchray.config import SlidePredictJobConfig, load_config
    from patchray.slides.inputs import resolve_slide_inputs
    from patchray.slides.jobs import run_predict_job

    overrides = list(args.overrides)
    if args.precision:
        overrides.append(f"predict.precision={args.precision}")
    cfg = load_config(args.config, overrides, model=SlidePredictJobConfig)
    slides = resolve_slide_inputs(args.slides)
    try:
        result = run_predict_job(slides, args.model, args.out, cfg, registry=args.registry or "")
    finally:
        runtime.shutdown()
    for s in result.summaries:
        score = "-" if s["slide_score"] is None else f"{s['slide_score']:.3f}"
        print(f"{s['slide_id']}: {s['tiles']} tiles, score {score}, {s['positive_tiles']} "
              f"tiles >= {s['threshold']:.3f} in {s['regions']} regions, positive area "
              f"{s['positive_area']:.4g} {s['area_unit']}")
    print(f"{result.tiles} tiles in {result.seconds['total']:.1f}s ({result.tiles_per_s:,.0f} "
          f"tiles/s); heat maps, overlays, GeoJSON and summaries in {result.out}/")
    return 0


def _add_slide_commands(sub: Any) -> None:
    slide = sub.add_parser("slide", help="whole slides: tile to a dataset, predict heat maps")
    ssub = slide.add_subparsers(dest="slide_command", required=True)
    tile = ssub.add_parser(
        "tile", help="tile slides (tissue only, centre-rule labels) into a Parquet dataset",
        description="Tile whole slides into the Parquet layout of `patchray ingest` (split by "
                    "patient, same report and manifest), one Ray task per slide; a thumbnail "
                    "with the tile grid and a count file per slide go to OUT/slides/. "
                    "Options: the `tiling:` (patch_size, stride, level or target_mpp, "
                    "min_tissue_fraction, centre_fraction ...), `slides:` and `ingest:` "
                    "sections of a spec (jobs/slide-tile.yaml) or --set.")
    tile.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files (.svs, .tif, ...)")
    tile.add_argument("--out", required=True, help="dataset root: local path or s3://bucket/prefix")
    tile.add_argument("--patients", metavar="FILE",
                      help="slide -> patient table: CSV with slide_id,patient_id columns or "
                           "YAML {slide_id: patient_id}; default: each slide is its own "
                           "patient (slide id = file name up to the first dot)")
    tile.add_argument("--masks", metavar="DIR",
                      help="tumour masks <slide>[-tumour].geojson (polygons, level-0 pixels, "
                           "preferred) or .png; tiles are labelled 1 when tumour lies in their "
                           "centre region (tiling.centre_fraction). Without: unlabelled tiles")
    tile.add_argument("--split-map", metavar="P=SPLIT,...",
                      help="assign every patient explicitly, e.g. p01=train,p02=val "
                           "(needed below 3 patients)")
    tile.add_argument("--context-scale", type=float, metavar="N",
                      help="also write each tile's context view (the same centre, N times the "
                           "field of view) for multiscale_* models, e.g. 4; = --set "
                           "context_scale=N")
    _config_args(tile)
    tile.set_defaults(func=cmd_slide_tile)

    pred = ssub.add_parser(
        "predict", help="heat maps, overlays, GeoJSON and summaries with a registered model",
        description="Tile each slide (no mask) at the model's input size (and its microns per "
                    "pixel when the card and slide state them), score every tile with the "
                    "OpenVINO model in a Ray Data job, and write per slide OUT/<id>.heatmap.npy, "
                    ".heatmap.png (over the thumbnail), .geojson (regions >= the model's "
                    "threshold, QuPath-ready) and .summary.json. Options: `tiling:`, "
                    "`slides:`, `predict:` (batch_size, concurrency, ...) of "
                    "jobs/slide-predict.yaml or --set.")
    pred.add_argument("slides", nargs="+", metavar="SLIDE")
    pred.add_argument("--model", required=True, metavar="NAME[@VERSION|@ALIAS] | DIR",
                      help="a registry reference, or a version folder holding card.json")
    pred.add_argument("--registry", metavar="URI", help="registry root (default "
                      "$PATCHRAY_REGISTRY, else ./registry)")
    pred.add_argument("--precision", choices=["auto", "f32", "bf16", "int8"],
                      help="default auto: the card's serving precision, with its threshold")
    pred.add_argument("--out", required=True, help="output folder (local)")
    _config_args(pred)
    pred.set_defaults(func=cmd_slide_predict)



#: The typed config each command validates its spec with (the others take no spec, or
#: ingest's data section only: the default model).
SPEC_MODELS = {"demo": "DemoConfig", "train": "TrainJobConfig", "tune": "TuneJobConfig",
               "serve": "ServeJobConfig", "evaluate": "LopoJobConfig", "slide tile": "SlideTileJobConfig",
               "slide predict": "SlidePredictJobConfig"}
SUBMIT_OPTIONS = ("--address", "--working-dir", "--env", "--installed", "--no-wait",
                  "--submission-id")


def _checked_job_command(command: list[str]) -> list[str]:
    """The command a job will run, checked here first: its usage (argparse exits 2 with the
    usage, as locally) and its spec with the command's own typed config, so a typo fails
    now and not on the cluster. ``demo`` gets its default spec explicitly, because the
    cluster's copy of the package may not sit beside jobs/."""
    from patchray import config as config_module
    from patchray.cluster.submit import cluster_path_warnings

    if not command:
        raise PatchrayError("submit needs a patchray command, e.g. `patchray submit --address "
                            "http://<head>:8265 train --config jobs/train-demo.yaml`")
    misplaced = [a for a in command if a.split("=", 1)[0] in SUBMIT_OPTIONS]
    if misplaced:
        raise PatchrayError(f"{misplaced[0].split('=', 1)[0]} is an option of submit: put it "
                            f"before the command (patchray submit {misplaced[0]} ... "
                            f"{command[0]} ...)")
    inner = build_parser().parse_args(command)
    if inner.command == "demo" and not inner.config and DEFAULT_SPEC.is_file():
        command = [command[0], "--config", str(DEFAULT_SPEC), *command[1:]]
        inner.config = str(DEFAULT_SPEC)
    if hasattr(inner, "overrides"):  # a command that takes a spec (--config / --set)
        kind = " ".join(filter(None, (inner.command, getattr(inner, "slide_command", None))))
        model = getattr(config_module, SPEC_MODELS.get(kind, "PipelineConfig"))
        cfg = config_module.load_config(inner.config, inner.overrides, model=model)
        for warning in cluster_path_warnings(cfg.model_dump(mode="json")):
            print(f"patchray: warning: {warning}", file=sys.stderr)
    return command


def cmd_submit(args: argparse.Namespace) -> int:
    from patchray.cluster import submit as jobs

    command = _checked_job_command(list(args.job))
    root = jobs.project_root()
    working_dir = Path(args.working_dir) if args.working_dir else (root or Path.cwd())
    request = jobs.prepare_job(command, working_dir=working_dir, cwd=Path.cwd(), env=args.env,
                               ship_package=not args.installed,
                               submission_id=args.submission_id)
    client = jobs.connect(args.address)
    job_id = jobs.submit(client, request)
    address = client.get_address()
    print(f"submitted {job_id} to {address}: {request.entrypoint}", file=sys.stderr)
    if args.no_wait:
        print(job_id)
        print(f"  follow it: patchray jobs logs {job_id} --follow --address {address}",
              file=sys.stderr)
        return 0
    try:
        jobs.follow_logs(client, job_id, lambda chunk: print(chunk, end="", flush=True))
    except KeyboardInterrupt:
        print(f"\npatchray: stopped following; job {job_id} keeps running (patchray jobs "
              f"stop {job_id} --address {address} stops it)", file=sys.stderr)
        return EXIT_INTERRUPTED
    row = jobs.wait_for_job(client, job_id, timeout_s=60)
    code = jobs.exit_status(row["status"], row["driver_exit_code"])
    print(f"job {job_id}: {row['status']}" + (f" ({row['message']})" if code else ""),
          file=sys.stderr)
    return code


def cmd_jobs_list(args: argparse.Namespace) -> int:
    import json

    from patchray.cluster import submit as jobs

    rows = jobs.list_jobs(jobs.connect(args.address))
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(jobs.format_jobs(rows))
    return 0


def cmd_jobs_status(args: argparse.Namespace) -> int:
    import json

    from patchray.cluster import submit as jobs

    row = jobs.job_status(jobs.connect(args.address), args.job_id)
    print(json.dumps(row) if args.json else jobs.format_status(row))
    return 0


def cmd_jobs_logs(args: argparse.Namespace) -> int:
    from patchray.cluster import submit as jobs

    client = jobs.connect(args.address)
    if args.follow:
        jobs.follow_logs(client, args.job_id, lambda chunk: print(chunk, end="", flush=True))
    else:
        print(jobs.job_logs(client, args.job_id), end="")
    return 0


def cmd_jobs_stop(args: argparse.Namespace) -> int:
    from patchray.cluster import submit as jobs

    client = jobs.connect(args.address)
    if not jobs.stop_job(client, args.job_id):
        print(f"job {args.job_id} had already ended")
        return 0
    row = jobs.wait_for_job(client, args.job_id, timeout_s=60) if args.wait else None
    print(f"job {args.job_id}: " + (row["status"] if row else "stop requested"))
    return 0


def _address_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", metavar="URL",
                   help="the cluster: its head node's dashboard, http://<head>:8265 (default "
                        "$RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS)")


def _add_cluster_commands(sub: Any) -> None:
    submit = sub.add_parser(
        "submit", help="run a patchray command as a job on a Ray cluster (Ray Jobs API)",
        description="Run COMMAND [ARGS...] (any patchray command, exactly as you would run "
                    "it here) as a job on the cluster: its spec is checked here first, the "
                    "project folder and this patchray package are uploaded, and the job's "
                    "driver joins the cluster. No credentials are sent: the cluster's nodes "
                    "bring their own. With RAY_AUTH_MODE=token clusters, the token comes from "
                    "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token. Follows the "
                    "job's log until it ends and exits with its status (--no-wait: prints "
                    "the job id and returns). Put submit's options before COMMAND.",
    )
    _address_arg(submit)
    submit.add_argument("--working-dir", metavar="DIR",
                        help="uploaded as the job's working directory; --config paths must "
                             "lie inside it (default: this patchray checkout, else the "
                             "current folder)")
    submit.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="an extra environment variable for the job (repeatable); names "
                             "that look like secrets are refused")
    submit.add_argument("--installed", action="store_true",
                        help="run the patchray installed on the cluster instead of uploading "
                             "this one")
    submit.add_argument("--no-wait", action="store_true",
                        help="print the job id and return instead of following the log")
    submit.add_argument("--submission-id", metavar="ID", help="the job's id (default: Ray's)")
    submit.add_argument("job", nargs=argparse.REMAINDER, metavar="COMMAND [ARGS...]",
                        help="e.g. train --config jobs/train-demo.yaml --set train.epochs=2")
    submit.set_defaults(func=cmd_submit)

    jobs = sub.add_parser("jobs", help="jobs on a Ray cluster: list, status, logs, stop")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True)
    ls = jsub.add_parser("list", help="every job submitted to the cluster")
    ls.add_argument("--json", action="store_true", help="JSON lines")
    ls.set_defaults(func=cmd_jobs_list)
    status = jsub.add_parser("status", help="a job's status, command, times and exit status")
    status.add_argument("job_id", metavar="ID")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_jobs_status)
    logs = jsub.add_parser("logs", help="a job's output")
    logs.add_argument("job_id", metavar="ID")
    logs.add_argument("--follow", "-f", action="store_true", help="until the job ends")
    logs.set_defaults(func=cmd_jobs_logs)
    stop = jsub.add_parser("stop", help="stop a job (its driver, then its workers)")
    stop.add_argument("job_id", metavar="ID")
    stop.add_argument("--wait", action="store_true", help="until it has stopped")
    stop.set_defaults(func=cmd_jobs_stop)
    for p in (ls, status, logs, stop):
        _address_arg(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="patchray", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole pipeline end to end on synthetic data")
    _config_args(demo)
    demo.add_argument("--keep-serving", action="store_true",
                      help="keep Ray Serve up after the demo until Ctrl-C")
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser(
        "train", help="train, export and evaluate on an ingested dataset",
        description="Train in <runs_root>/<name>, then export and evaluate the best checkpoint "
                    "(by val AUC). Running the same name again resumes after its latest "
                    "checkpoint; a finished run answers with the model it registered.",
    )
    _config_args(train)
    train.set_defaults(func=cmd_train)

    tune = sub.add_parser(
        "tune", help="Hyperband search over the training of `patchray train`",
        description="Search the spec's tune.space with Ray Tune (tune.scheduler: hyperband, "
                    "asha or random) in <runs_root>/<name>. Running the same command again "
                    "after the driver died restores the experiment: finished trials are not "
                    "run again. Writes results/trials.csv|md, trial_curves.png and best.yaml "
                    "(a spec for `patchray train`).",
    )
    _config_args(tune)
    tune.add_argument("--then-train", action="store_true",
                      help="then train the best point for the full budget, export and "
                           "evaluate it like `patchray train`")
    tune.set_defaults(func=cmd_tune)

    evaluate = sub.add_parser("evaluate", help="evaluation jobs (leave one patient out)")
    esub = evaluate.add_subparsers(dest="evaluate_command", required=True)
    lopo = esub.add_parser(
        "lopo", help="leave-one-patient-out: a model per held-out patient x seed, in parallel",
        description="Hold out each patient (lopo.group_by: patient or site) in turn, train on "
                    "the rest minus lopo.val_groups validation groups (which choose the "
                    "checkpoint and the threshold), score the held-out one. Folds run as "
                    "parallel Ray Tune trials; fold models are not registered. Writes "
                    "<runs_root>/<name>/lopo/lopo.json|csv|md|png; a rerun skips finished "
                    "folds.")
    _config_args(lopo)
    lopo.set_defaults(func=cmd_evaluate_lopo)

    srv = sub.add_parser("serve", help="serve a registered model with Ray Serve")
    srv.add_argument("model", metavar="NAME[@VERSION|@ALIAS] | DIR",
                     help="a registry reference, or a version folder holding card.json")
    srv.add_argument("--registry", metavar="URI", help="registry root (default "
                     "$PATCHRAY_REGISTRY, else registry/ beside runs_root)")
    srv.add_argument("--precision", choices=["auto", "f32", "bf16", "int8"],
                     help="default auto: the fastest precision that passed its gate")
    srv.add_argument("--port", type=int, default=8000)
    _config_args(srv)
    srv.set_defaults(func=cmd_serve)

    models = sub.add_parser("models", help="list the model registry")
    models.add_argument("pattern", nargs="?", default="*")
    models.set_defaults(func=cmd_models)

    bench = sub.add_parser("bench", help="benchmarks (python -m patchray.benchmarks)",
                           description="Run a benchmark: ratios measured side by side. "
                                       "Options after the name go to the benchmark runner "
                                       "(--out DIR, --quick, --size N).")
    bench.add_argument("name", help="infer, training, tune, ingest, decode, augment, reader, "
                                    "memory, serve, slides, lopo, sgan or all")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)

    _add_data_commands(sub)
    _add_slide_commands(sub)
    _add_registry_commands(sub)
    _add_service_commands(sub)
    _add_cluster_commands(sub)
    return parser


EXIT_ERROR = 2  # usage, config or data errors: the message says what to fix
EXIT_BUG = 1  # anything else: a bug in patchray or below it; the traceback is in the log
EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from patchray import runtime

    runtime.prepare_process()  # before anything imports TensorFlow
    routing = None
    if args.command not in RUN_COMMANDS:  # those configure output themselves (RunOutput)
        routing = configure_terminal(verbose=getattr(args, "verbose", False))
    try:
        return args.func(args)
    except PatchrayError as e:
        where = getattr(e, "patchray_log", None)
        print(f"patchray: error: {e}" + (f"\n  (log: {where})" if where else ""),
              file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("patchray: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        where = getattr(e, "patchray_log", None)
        if where is None:
            raise
        print(f"patchray: unexpected error: {type(e).__name__}: {e}\n  the traceback is in "
              f"{where}; please report it with that file", file=sys.stderr)
        return EXIT_BUG
    finally:
        if routing is not None:
            routing.restore()


if __name__ == "__main__":
    sys.exit(main())
