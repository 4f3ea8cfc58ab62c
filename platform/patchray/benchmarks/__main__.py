"""Run patchray's benchmarks.

    python -m patchray.benchmarks {ingest,decode,augment,reader,training,memory,infer,tune,serve,all} \\
        --out runs/bench [--size 50 --size 96] [--quick]
    python -m patchray.benchmarks serve --out runs/bench [--quick | --smoke] \\
        [--model NAME@ALIAS_OR_VERSION_DIR --registry URI]   # wrk against the service
    python -m patchray.benchmarks slides --out runs/bench [--smoke] [--model ... --registry URI]
    python -m patchray.benchmarks sgan --out runs/bench [--quick]   # 20% labels: SGAN vs cnn6
    python -m patchray.benchmarks lopo --out runs/bench [--quick]   # real-patient LOPO

``--quick`` keeps each benchmark under about two minutes on 2 cores; full runs are larger
and repeat more. Results: ``<out>/<name>.json`` and ``<out>/<name>.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from patchray.benchmarks import (
    augment,
    decode,
    infer,
    ingest,
    lopo,
    memory,
    reader,
    serve,
    sgan,
    slides,
    training,
    tune,
)
from patchray.benchmarks.common import BenchOptions, say

BENCHMARKS = {
    "ingest": ingest.run,
    "decode": decode.run,
    "augment": augment.run,
    "reader": reader.run,
    "training": training.run,
    "memory": memory.run,
    "infer": infer.run,  # Keras vs OpenVINO f32 / bf16 / INT8, batch 1 and 64
    "tune": tune.run,  # minutes: Ray Tune experiments, not a throughput
    "serve": serve.run,  # wrk against the service vs plain/no-op Serve and the raw model
    "slides": slides.run,  # slide predict's heat-map tiles/s vs the raw model's patches/s
    "sgan": sgan.run,  # minutes: SGAN on 20% labels vs cnn6 on 20% / 100% (test AUC)
    "lopo": lopo.run,  # minutes: leave-one-patient-out on real IDC, with/without stain norm
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m patchray.benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=[*BENCHMARKS, "all"])
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    p.add_argument("--size", type=int, action="append", dest="sizes",
                   help="patch side in pixels (repeatable; default 50 and 96)")
    p.add_argument("--quick", action="store_true", help="small data, few repeats (~2 min each)")
    p.add_argument("--gpu-images-per-s", type=float, default=31_000.0,
                   help="GPU training rate the decode table is sized against")
    p.add_argument("--model", help="serve, slides: a registered model (NAME@ALIAS or a version "
                   "folder) instead of training a small one")
    p.add_argument("--registry", help="serve: the registry root --model is in")
    p.add_argument("--smoke", action="store_true",
                   help="serve: the smallest run (concurrency 1 and 4, 2 s each); slides: one "
                   "small slide, one round")
    args = p.parse_args(argv)
    from patchray.runtime import prepare_process

    prepare_process()  # the one process environment (legacy Keras, quiet TensorFlow)
    opts = BenchOptions(out=args.out, sizes=tuple(args.sizes or (50, 96)), quick=args.quick,
                        gpu_images_per_s=args.gpu_images_per_s,
                        extra={k: v for k, v in (("model", args.model),
                                                 ("registry", args.registry),
                                                 ("smoke", args.smoke)) if v})
    names = list(BENCHMARKS) if args.name == "all" else [args.name]
    for name in names:
        say(f"=== {name} ({'quick' if opts.quick else 'full'}, sizes {list(opts.sizes)}) ===")
        BENCHMARKS[name](opts, say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
