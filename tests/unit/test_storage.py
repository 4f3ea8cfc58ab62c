"""Storage URIs without a server: resolving, joining, local atomic writes, settings, errors.

The same functions against a real S3 server are in tests/integration/test_object_storage.py.
"""

from __future__ import annotations

import os

import pyarrow.fs as pafs
import pytest

from patchray import storage
from patchray.errors import StorageError

S3_VARS = (*storage.S3_ENV, "AWS_PROFILE")


@pytest.fixture(autouse=True)
def no_s3_env(monkeypatch):
    """Each test starts from an environment without any S3 settings."""
    for name in S3_VARS:
        monkeypatch.delenv(name, raising=False)


def test_resolve_local_paths_and_file_uris_to_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs, path = storage.resolve("data/ds")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "data" / "ds")
    assert storage.resolve(f"file://{tmp_path}/ds")[1] == str(tmp_path / "ds")


def test_resolve_s3_uri_to_bucket_path_without_contacting_the_store():
    fs, path = storage.resolve("s3://patchray-data/idc/train/")
    assert isinstance(fs, pafs.S3FileSystem) and path == "patchray-data/idc/train"
    assert storage.resolve("s3://patchray-data")[1] == "patchray-data"


@pytest.mark.parametrize("uri", ["", "s3://", "s3:///idc", "s3://bucket//idc", "gs://b/x",
                                 "hdfs://nn/x"])
def test_resolve_rejects_malformed_and_unsupported_uris(uri):
    with pytest.raises(StorageError, match="URI"):
        storage.resolve(uri)


def test_join_uses_slashes_and_ignores_stray_separators():
    assert storage.join("s3://b/ds/", "/train/", "part-0.parquet") == "s3://b/ds/train/part-0.parquet"
    assert storage.join("/tmp/ds", "", "manifest.json") == "/tmp/ds/manifest.json"
    assert storage.is_remote("s3://b/x") and not storage.is_remote("file:///x")


def test_local_write_is_atomic_and_leaves_no_temporary_files(tmp_path):
    uri = str(tmp_path / "a" / "b" / "obj.json")
    storage.write_json(uri, {"v": 1})
    storage.write_json(uri, {"v": 2})
    assert storage.read_json(uri) == {"v": 2}
    assert os.listdir(tmp_path / "a" / "b") == ["obj.json"]


def test_failed_local_write_keeps_the_old_content_and_cleans_up(tmp_path):
    target = tmp_path / "taken"
    (target / "inside").mkdir(parents=True)  # the final rename onto a non-empty dir fails
    with pytest.raises(StorageError, match=str(target)):
        storage.write_bytes(str(target), b"new")
    assert sorted(os.listdir(tmp_path)) == ["taken"] and (target / "inside").is_dir()


def test_reading_missing_or_invalid_objects_names_the_uri(tmp_path):
    missing = str(tmp_path / "nope.json")
    with pytest.raises(StorageError, match=f"{missing}: not found"):
        storage.read_bytes(missing)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(StorageError, match="bad.json: not valid JSON"):
        storage.read_json(str(tmp_path / "bad.json"))
    assert not storage.exists(missing) and storage.exists(str(tmp_path / "bad.json"))


def test_delete_reports_whether_the_file_was_there(tmp_path):
    uri = str(tmp_path / "m.json")
    storage.write_json(uri, {})
    assert storage.delete(uri) is True and not storage.exists(uri)
    assert storage.delete(uri) is False
    with pytest.raises(StorageError, match=f"cannot delete {uri}: not found"):
        storage.delete(uri, missing_ok=False)


def test_list_files_is_recursive_sorted_and_filtered_by_suffix(tmp_path):
    for rel in ["train/part-1.parquet", "train/part-0.parquet", "val/part-0.parquet",
                "train/part-2.parquet.inprogress", "manifest.json"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert storage.list_files(str(tmp_path), ".parquet") == [
        str(tmp_path / r) for r in ["train/part-0.parquet", "train/part-1.parquet",
                                    "val/part-0.parquet"]]
    assert len(storage.list_files(str(tmp_path))) == 5
    assert storage.list_files(str(tmp_path / "absent")) == []


def test_upload_then_download_a_directory_tree_locally(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "model.xml").write_bytes(b"<xml/>")
    (src / "sub" / "weights.bin").write_bytes(os.urandom(1000))
    written = storage.upload_dir(src, str(tmp_path / "copy"))
    assert written == [str(tmp_path / "copy" / "model.xml"),
                       str(tmp_path / "copy" / "sub" / "weights.bin")]
    back = storage.download_dir(str(tmp_path / "copy"), tmp_path / "back")
    for rel in ["model.xml", "sub/weights.bin"]:
        assert (back / rel).read_bytes() == (src / rel).read_bytes()
    with pytest.raises(StorageError, match="no files there"):
        storage.download_dir(str(tmp_path / "absent"), tmp_path / "x")


def test_endpoint_override_takes_precedence_and_must_be_a_bare_url(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://aws-style:1")
    assert storage.s3_settings().endpoint == "http://aws-style:1"
    monkeypatch.setenv("PATCHRAY_S3_ENDPOINT", "http://127.0.0.1:9000")
    s = storage.s3_settings()
    assert s.endpoint == "http://127.0.0.1:9000" and s.region == "us-east-1"
    for bad in ["127.0.0.1:9000", "http://minio:9000/bucket"]:
        monkeypatch.setenv("PATCHRAY_S3_ENDPOINT", bad)
        with pytest.raises(StorageError, match="PATCHRAY_S3_ENDPOINT|path"):
            storage.resolve("s3://b/x")


def test_half_set_credentials_are_an_error(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA123")
    with pytest.raises(StorageError, match="AWS_SECRET_ACCESS_KEY is not"):
        storage.s3_settings()


def test_filesystem_shipped_to_ray_workers_carries_endpoint_and_credentials(monkeypatch):
    monkeypatch.setenv("PATCHRAY_S3_ENDPOINT", "https://minio.example.org:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA123")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    options = storage.s3_filesystem().__reduce__()[1][0]  # what pickle (and Ray) sends
    assert options["endpoint_override"] == "minio.example.org:9000"
    assert options["scheme"] == "https" and options["region"] == "eu-west-1"
    assert options["access_key"] == "AKIA123" and options["allow_bucket_creation"] is False
    assert storage.s3_env() == {
        "PATCHRAY_S3_ENDPOINT": "https://minio.example.org:9000", "AWS_ACCESS_KEY_ID": "AKIA123",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_DEFAULT_REGION": "eu-west-1"}


def test_ray_train_gets_an_explicit_filesystem_only_for_remote_runs(tmp_path):
    assert storage.ray_storage_args(str(tmp_path)) == {"storage_path": str(tmp_path)}
    args = storage.ray_storage_args("s3://runs-bucket/patchray/")
    assert args["storage_path"] == "runs-bucket/patchray"
    assert isinstance(args["storage_filesystem"], pafs.S3FileSystem)


@pytest.mark.parametrize(
    ("message", "hint"),
    [
        ("When getting information for key 'ds/x' in bucket 'b': AWS Error NETWORK_CONNECTION "
         "during HeadObject operation: curlCode: 7, Could not connect to server",
         "cannot reach the S3 endpoint http://127.0.0.1:9000"),
        ("Bucket 'nob' not found. To create buckets, enable the allow_bucket_creation option.",
         "bucket 'pr-data' does not exist at http://127.0.0.1:9000"),
        ("When listing objects under key 'ds/' in bucket 'b': AWS Error INVALID_ACCESS_KEY_ID "
         "during ListObjectsV2 operation", "access denied by http://127.0.0.1:9000"),
        ("AWS Error ACCESS_DENIED during HeadObject operation: No response body.",
         "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"),
        ("AWS Error SLOW_DOWN during PutObject", "at http://127.0.0.1:9000: OSError"),
    ],
)
def test_store_errors_are_explained_with_uri_endpoint_and_what_to_check(monkeypatch, message,
                                                                        hint):
    monkeypatch.setenv("PATCHRAY_S3_ENDPOINT", "http://127.0.0.1:9000")
    err = storage._diagnose(OSError(message), "s3://pr-data/ds/manifest.json", "read")
    assert str(err).startswith("cannot read s3://pr-data/ds/manifest.json")
    assert hint in str(err) and message in str(err)
