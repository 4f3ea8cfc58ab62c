"""The ``patchray`` command line: thin wrappers that parse, configure and call the library.

    patchray demo [--config jobs/demo.yaml] [--set train.epochs=3 ...] [--keep-serving]
    patchray serve MODEL_DIR [--port 8000]
    patchray models [PATTERN]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from patchray.errors import PatchrayError

DEFAULT_SPEC = Path(__file__).resolve().parents[2] / "jobs" / "demo.yaml"


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML job spec (default: built-in defaults)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key, e.g. --set train.epochs=3 (repeatable)",
    )


def _wait_for_interrupt(message: str) -> None:
    print(message, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()


def cmd_demo(args: argparse.Namespace) -> int:
    from patchray.config import load_config
    from patchray.pipeline import run_demo

    spec = args.config or (str(DEFAULT_SPEC) if DEFAULT_SPEC.is_file() else None)
    cfg = load_config(spec, args.overrides)
    result = run_demo(cfg, shutdown=not args.keep_serving)
    if args.keep_serving:
        import ray
        from ray import serve

        _wait_for_interrupt(f"[patchray] serving at {result.service_url} until Ctrl-C")
        serve.shutdown()
        ray.shutdown()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from patchray.config import load_config
    from patchray.pipeline import init_ray, start_service

    cfg = load_config(args.config, args.overrides + [f"serve.port={args.port}"])
    init_ray(cfg.ray, metrics_port=cfg.serve.metrics_port)
    url = start_service(cfg, Path(args.model_dir).resolve())
    _wait_for_interrupt(
        f"[patchray] serving {args.model_dir} at {url}/v1/predict; metrics on "
        f"http://127.0.0.1:{cfg.serve.metrics_port}/metrics; Ctrl-C to stop"
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from patchray.models import describe_models

    rows = describe_models(args.pattern)
    print(f"{'name':<20} {'family':<12} {'input':>5} {'min':>4} {'params':>12}  description")
    for r in rows:
        print(f"{r['name']:<20} {r['family']:<12} {r['default_input_size']:>5} "
              f"{r['min_input_size']:>4} {r['params']:>12,}  {r['description']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="patchray", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole pipeline end to end on synthetic data")
    _config_args(demo)
    demo.add_argument("--keep-serving", action="store_true",
                      help="keep Ray Serve up after the demo until Ctrl-C")
    demo.set_defaults(func=cmd_demo)

    srv = sub.add_parser("serve", help="serve an exported model with Ray Serve")
    srv.add_argument("model_dir", help="folder with model.xml and metadata.json")
    srv.add_argument("--port", type=int, default=8000)
    _config_args(srv)
    srv.set_defaults(func=cmd_serve)

    models = sub.add_parser("models", help="list the model registry")
    models.add_argument("pattern", nargs="?", default="*")
    models.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return args.func(args)
    except PatchrayError as e:
        print(f"patchray: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
