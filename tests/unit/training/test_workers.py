"""Where training ran: each worker's node id, read back from the digests the workers write,
and the placement strategy that decides how workers spread over nodes."""

from __future__ import annotations

import json

from patchray.config import load_config
from patchray.training.trainer import read_workers, scaling_config


def test_read_workers_lists_every_rank_with_its_node(tmp_path):
    replicas = tmp_path / "replicas"
    replicas.mkdir()
    for rank, node in ((1, "node-b"), (0, "node-a")):
        (replicas / f"rank{rank}.json").write_text(json.dumps(
            {"rank": rank, "world_size": 2, "trainable_weights_sha256": "x", "node_id": node}))
    assert read_workers(str(replicas)) == [
        {"rank": 0, "world_size": 2, "node_id": "node-a"},
        {"rank": 1, "world_size": 2, "node_id": "node-b"}]


def test_read_workers_of_a_run_without_digests_is_empty(tmp_path):
    assert read_workers(str(tmp_path / "missing")) == []


def test_placement_strategy_reaches_the_scaling_config():
    assert scaling_config(load_config()).placement_strategy == "PACK"
    cfg = load_config(overrides=["train.placement_strategy=STRICT_SPREAD"])
    assert scaling_config(cfg).placement_strategy == "STRICT_SPREAD"
