"""Integration fixtures: a real S3 server (moto's, over HTTP on loopback) for the session.

``s3_server`` starts ``python -m moto.server`` as a separate process, makes an IAM user with
S3 rights and a bucket, then turns on moto's authentication, so wrong credentials are refused
as a real store would refuse them. It points patchray at the server through the environment
(``PATCHRAY_S3_ENDPOINT``, ``AWS_*``) and restores the environment afterwards.

Ray workers only see those variables if they are set before Ray starts (local workers inherit
the driver's environment; ``patchray.runtime.init_ray`` also forwards them in the job's
``runtime_env``). ``ray_cluster`` below therefore overrides the session fixture of
``tests/conftest.py`` to start the S3 server first, whichever integration test asks first.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from tests.conftest import free_port

BUCKET = "patchray-test"
REGION = "us-east-1"
ALLOW_S3 = {"Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:<port>
    bucket: str
    access_key: str
    secret_key: str
    log: Path  # the server's request log, for debugging a failed test

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])


def _wait_until_up(proc: subprocess.Popen, endpoint: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            requests.get(f"{endpoint}/moto-api/", timeout=1).raise_for_status()
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"moto server at {endpoint} did not answer in {timeout_s}s:\n"
                       f"{log.read_text()}")


def _provision(endpoint: str) -> tuple[str, str]:
    """Create a user allowed s3:*, its access key and the bucket; then require credentials."""
    import boto3

    # moto accepts any credentials until authentication is switched on below.
    bootstrap = {"endpoint_url": endpoint, "region_name": REGION,
                 "aws_access_key_id": "bootstrap", "aws_secret_access_key": "bootstrap"}
    iam = boto3.client("iam", **bootstrap)
    iam.create_user(UserName="patchray")
    iam.put_user_policy(UserName="patchray", PolicyName="s3-all",
                        PolicyDocument=json.dumps(ALLOW_S3))
    key = iam.create_access_key(UserName="patchray")["AccessKey"]
    boto3.client("s3", **bootstrap).create_bucket(Bucket=BUCKET)
    # From now on every request must be signed by a known key with the right secret.
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=5).raise_for_status()
    return key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_up(proc, endpoint, log, timeout_s=60)
        access_key, secret_key = _provision(endpoint)
        with pytest.MonkeyPatch.context() as env:
            for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN",
                         "AWS_PROFILE", "AWS_REGION"):
                env.delenv(name, raising=False)
            env.setenv("PATCHRAY_S3_ENDPOINT", endpoint)
            env.setenv("AWS_ACCESS_KEY_ID", access_key)
            env.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
            env.setenv("AWS_DEFAULT_REGION", REGION)
            env.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never wait on instance metadata
            yield S3Server(endpoint, BUCKET, access_key, secret_key, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def ray_cluster(s3_server, ray_cluster):
    """The session's Ray cluster, started after the S3 server so workers get its settings."""
    return ray_cluster
