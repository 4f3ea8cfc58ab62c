"""The Serve application: an ingress in front of a classifier, each scaled on its own.

Every limit comes from :class:`patchray.config.ServeAppArgs` (a job spec's ``serve:``
section, or ``args:`` in serve/config.yaml), because Ray Serve's defaults protect nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.serve.config import BackpressureConfig

from patchray import storage
from patchray.config import ServeAppArgs
from patchray.serving.classifier import Classifier
from patchray.serving.ingress import Ingress


# Serve's access log writes the client's X-Request-ID verbatim (a place where an integration
# may put an accession number): it is off for the proxy and the replicas. The audit record
# and the metrics hold what it held, with patchray's own request id.
NO_ACCESS_LOG = {"enable_access_log": False}


def ingress_max_ongoing(args: ServeAppArgs) -> int:
    # Batches fill only if a replica admits a batch's worth of requests per batch in flight
    # (Serve's default of 5 would cap every batch at 5 patches).
    return max(args.max_batch_size * args.max_concurrent_batches, 32)


def resolved(args: ServeAppArgs) -> ServeAppArgs:
    """Only the application's fields (a job's ``serve:`` section has more), with local paths
    made absolute here: replicas run in other working directories."""
    from patchray.registry.store import default_root
    from patchray.serving.audit import default_audit_dir
    from patchray.serving.keys import default_keys_uri

    values = {k: getattr(args, k) for k in ServeAppArgs.model_fields}
    for key, default in (("registry", default_root), ("keys", default_keys_uri),
                         ("audit_dir", default_audit_dir)):
        values[key] = storage.absolute(values[key] or default())
    model = values["model"]
    if model and Path(model).is_dir():
        values["model"] = str(Path(model).resolve())
    return ServeAppArgs.model_validate(values)


def build_app(args: ServeAppArgs) -> Any:
    """The bound application for ``serve.run`` or a Serve config's ``import_path``."""
    args = resolved(args)
    config = args.model_dump(mode="json")
    # 0 leaves the option out, so Serve places replicas as it likes.
    spread = ({"max_replicas_per_node": args.max_replicas_per_node}
              if args.max_replicas_per_node else {})
    fused = args.topology == "fused"
    classifier = None if fused else Classifier.options(
        autoscaling_config={
            "min_replicas": args.min_replicas,
            "initial_replicas": max(1, args.min_replicas),
            "max_replicas": args.max_replicas,
            "target_ongoing_requests": args.target_ongoing_requests,
        },
        # Batches, not requests: a few per replica keep OpenVINO busy without queueing there.
        max_ongoing_requests=2 * args.max_concurrent_batches * args.ingress_max_replicas,
        ray_actor_options={"num_cpus": args.replica_cpus},
        user_config={"model": args.model},
        logging_config=NO_ACCESS_LOG,
        **spread,
    ).bind(config)
    # Fused: the ingress holds the model, so it takes the model's reservation and its
    # user_config (a declarative `serve deploy` of a new model reconfigures it in place).
    fused_options = ({"user_config": {"model": args.model}} if fused else {})
    return Ingress.options(
        autoscaling_config={
            "min_replicas": args.ingress_min_replicas,
            "initial_replicas": args.ingress_min_replicas,
            "max_replicas": args.ingress_max_replicas,
            "target_ongoing_requests": args.ingress_target_ongoing_requests,
        },
        max_ongoing_requests=ingress_max_ongoing(args),
        max_queued_requests=args.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=503,
                                               retry_after_s=args.retry_after_s),
        ray_actor_options={"num_cpus": max(args.ingress_cpus, args.replica_cpus) if fused
                           else args.ingress_cpus},
        logging_config=NO_ACCESS_LOG,
        **fused_options,
        **spread,
    ).bind(classifier, config)
