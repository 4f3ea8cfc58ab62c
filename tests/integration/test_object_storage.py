"""Datasets and training runs in object storage: a real S3 server (moto) over HTTP on loopback,
read and written by pyarrow, s3fs, Ray Data and Ray Train exactly as a MinIO would be."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from tests.conftest import free_port

from patchray import storage
from patchray.errors import StorageError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3_dataset(s3_server) -> tuple[str, dict]:
    """A tiny synthetic dataset (4 patients x 20 patches) written to the S3 server."""
    from patchray.config import DataConfig
    from patchray.data.ingest import ingest_synthetic

    uri = s3_server.uri("ds")
    data = DataConfig.model_validate({"synthetic": {"num_patients": 4, "patches_per_patient": 20}})
    return uri, ingest_synthetic(data, uri).to_json()


def _keys(s3_server, prefix: str) -> list[str]:
    """Object keys as the server lists them to an independent client (boto3)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=s3_server.bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_dataset_written_to_s3_reads_back_with_pyarrow(s3_server, s3_dataset):
    from patchray.data.manifest import read_manifest

    uri, manifest = s3_dataset
    assert read_manifest(uri).to_json() == manifest
    files = storage.list_files(uri, ".parquet")
    assert files == sorted(storage.join(uri, f) for s in manifest["splits"].values()
                           for f in s["files"])
    keys = _keys(s3_server, "ds/")
    assert {"ds/manifest.json", *[f.split("/", 3)[3] for f in files]} <= set(keys)
    fs, path = storage.resolve(storage.join(uri, manifest["splits"]["train"]["files"][0]))
    table = pq.read_table(path, filesystem=fs)
    assert table.num_rows == manifest["splits"]["train"]["rows"] > 0
    assert set(table.column("patient_id").to_pylist()) == set(manifest["splits"]["train"]["patients"])
    assert not [k for k in keys if k.endswith(".inprogress")]


def test_s3fs_with_pinned_aiobotocore_reads_the_same_objects(s3_dataset):
    uri, manifest = s3_dataset
    fs = storage.s3fs_filesystem()
    bucket_path = uri[len("s3://"):]
    assert json.loads(fs.cat(f"{bucket_path}/manifest.json")) == manifest
    assert sorted(p for p in fs.find(bucket_path) if p.endswith(".parquet")) == [
        f[len("s3://"):] for f in storage.list_files(uri, ".parquet")]


def test_ray_data_streams_the_train_split_from_s3(ray_cluster, s3_dataset):
    from patchray.data.manifest import PatchDataset
    from patchray.data.pipeline import training_dataset
    from patchray.inference.preprocess import Preprocess

    uri, manifest = s3_dataset
    train = manifest["splits"]["train"]
    ds = training_dataset(PatchDataset.open(uri), "train", preprocess=Preprocess(size=50),
                          augment=True, weighting="balanced", batch_size=16)
    batches = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    x = np.concatenate([b["x"] for b in batches])
    assert x.shape == (train["rows"], 50, 50, 3) and x.dtype == np.uint8
    assert len(np.concatenate([b["y"] for b in batches])) == train["rows"]


def test_ray_train_keeps_checkpoints_and_replica_digests_in_s3(
    ray_cluster, s3_server, s3_dataset, tmp_path
):
    from patchray.config import TrainJobConfig, load_config
    from patchray.data.manifest import PatchDataset
    from patchray.training.trainer import run_training

    uri, _ = s3_dataset
    cfg = load_config(model=TrainJobConfig, overrides=[
        "train.model=tiny", "train.epochs=1", "train.num_workers=2", "train.batch_size=16"])
    runs = s3_server.uri("runs")
    outcome = run_training(cfg, dataset=PatchDataset.open(uri), storage_root=runs, run_name="t",
                           local_dir=str(tmp_path))

    assert outcome.storage_uri == storage.join(runs, "t")
    run_files = storage.list_files(outcome.storage_uri)
    checkpoint_meta = [f for f in run_files if "/checkpoint_" in f and f.endswith("/meta.json")]
    assert len(checkpoint_meta) == 1, run_files
    assert json.loads(storage.read_bytes(checkpoint_meta[0]))["epoch"] == 0
    assert any(f.endswith(".index") for f in run_files)  # the tf.train.Checkpoint itself
    replicas = storage.list_files(storage.join(runs, "t", "replicas"), ".json")
    assert replicas == [storage.join(runs, "t", "replicas", f"rank{r}.json") for r in (0, 1)]
    digests = {storage.read_json(f)["trainable_weights_sha256"] for f in replicas}
    assert len(digests) == 1  # all-reduced gradients: identical replicas
    assert (tmp_path / "best_checkpoint" / "meta.json").is_file()
    assert not list(tmp_path.glob(f"{s3_server.bucket}*")), "run went to a local folder"


def test_upload_and_download_a_model_directory(s3_server, tmp_path):
    src = tmp_path / "model"
    (src / "1").mkdir(parents=True)
    (src / "1" / "model.xml").write_bytes(b"<net/>")
    (src / "1" / "model.bin").write_bytes(np.arange(10_000, dtype=np.float32).tobytes())
    uri = s3_server.uri("models", "tiny-synthetic")
    assert storage.upload_dir(src, uri) == [storage.join(uri, "1", n)
                                            for n in ("model.bin", "model.xml")]
    # Streamed object by object: no empty "dir/" marker objects for other clients to trip on.
    assert _keys(s3_server, "models/") == ["models/tiny-synthetic/1/model.bin",
                                           "models/tiny-synthetic/1/model.xml"]
    back = storage.download_dir(uri, tmp_path / "back")
    assert (back / "1" / "model.bin").read_bytes() == (src / "1" / "model.bin").read_bytes()
    assert storage.delete(storage.join(uri, "1", "model.xml")) is True
    assert storage.list_files(uri) == [storage.join(uri, "1", "model.bin")]


@pytest.mark.parametrize(
    "call",
    [
        lambda uri: storage.exists(f"{uri}/manifest.json"),
        lambda uri: storage.read_json(f"{uri}/manifest.json"),
        lambda uri: storage.write_json(f"{uri}/manifest.json", {}),
        lambda uri: storage.list_files(uri),
        lambda uri: storage.check_access(uri),
        lambda uri: storage.delete(f"{uri}/manifest.json"),
    ],
    ids=["exists", "read", "write", "list", "check_access", "delete"],
)
def test_missing_bucket_is_a_storage_error_naming_uri_and_bucket(s3_server, call):
    uri = "s3://patchray-no-such-bucket/ds"
    with pytest.raises(StorageError, match=r"s3://patchray-no-such-bucket/ds.*bucket "
                                           r"'patchray-no-such-bucket' does not exist at "
                                           + s3_server.endpoint):
        call(uri)


@pytest.mark.parametrize("variable", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
def test_wrong_credentials_are_a_storage_error_saying_what_to_check(
    s3_server, s3_dataset, monkeypatch, variable
):
    uri = storage.join(s3_dataset[0], "manifest.json")
    monkeypatch.setenv(variable, "wrong-" + variable.lower())
    for call in (storage.read_json, storage.exists, storage.delete,
                 lambda u: storage.write_bytes(u, b"{}")):
        with pytest.raises(StorageError, match=rf"{uri}: access denied by {s3_server.endpoint}"
                                               r".*check AWS_ACCESS_KEY_ID"):
            call(uri)


def test_unreachable_endpoint_is_a_storage_error_naming_it(monkeypatch):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("PATCHRAY_S3_ENDPOINT", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    with pytest.raises(StorageError, match=rf"s3://patchray-test/ds: cannot reach the S3 "
                                           rf"endpoint {endpoint}: check PATCHRAY_S3_ENDPOINT"):
        storage.check_access("s3://patchray-test/ds")


class CountingProxy:
    """An HTTP proxy on loopback in front of the S3 server that records every request
    (method, path), so a test can count what patchray asks the store for. Forwarded as is
    (headers included: the SigV4 signature covers the Host header the client sent)."""

    def __init__(self, upstream: str):
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        target = urlsplit(upstream)
        self.requests: list[tuple[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

            def _forward(self) -> None:
                proxy.requests.append((self.command, self.path.split("?")[0]))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                reply = conn.getresponse()
                data = reply.read()
                self.send_response(reply.status, reply.reason)
                for key, value in reply.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                # A HEAD answer carries the object's length, not its (empty) body's.
                size = reply.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", size or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self, suffix: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for method, path in self.requests:
            if path.endswith(suffix):
                counts[method] = counts.get(method, 0) + 1
        return counts

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_patchray_train_reads_the_manifest_once(ray_cluster, s3_server, s3_dataset, tmp_path,
                                                monkeypatch):
    """The whole `patchray train` job (train, export sample, threshold, test scoring) on an
    s3:// dataset asks the store for manifest.json once (it was ~11 reads, 2 requests each)."""
    from patchray.config import TrainJobConfig, load_config
    from patchray.workflows.train import run_train_job

    uri, _ = s3_dataset
    proxy = CountingProxy(s3_server.endpoint)
    try:
        monkeypatch.setenv("PATCHRAY_S3_ENDPOINT", proxy.endpoint)  # this driver only
        cfg = load_config(model=TrainJobConfig, overrides=[
            "name=manifest-reads", "dataset=s3-test", f"runs_root={tmp_path}",
            f"data.root={uri}", "train.model=tiny", "train.epochs=1", "train.batch_size=16",
            "data.augment=false", f"registry.root={s3_server.uri('registry')}"])
        result = run_train_job(cfg, shutdown=False)
    finally:
        proxy.close()
    # Registered in the S3 registry, then fetched (and verified) to a local folder.
    assert result.registry == s3_server.uri("registry")
    assert storage.exists(f"{result.registry}/models/{result.card.name}/{result.card.version}"
                          "/card.json")
    assert (result.model_dir / "card.json").is_file() and (result.model_dir / "model.xml").is_file()
    assert any(path.endswith(".parquet") for _, path in proxy.requests)  # it did go through
    assert proxy.count("manifest.json") == {"GET": 1}, proxy.requests
