"""A real S3-compatible server for the tests: moto's, run as its own process (`python -m
moto.server`) on a free port with IAM authentication on, so wrong credentials are refused as a
real S3 or MinIO would refuse them (fixtures `moto_s3`, one per test module, and `bucket`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hyv.service.storage_s3 import S3Storage
from tests.service.conftest_api import free_port

__all__ = ["bucket", "moto_s3"]  # the fixtures (conftest.py star-imports them)

REGION = "us-east-1"
PREFIX = "test/"


@dataclass
class MotoS3:
    url: str
    access_key_id: str
    secret_access_key: str

    def client(self, **overrides: Any) -> Any:
        import boto3
        from botocore.config import Config

        values = {
            "endpoint_url": self.url,
            "region_name": REGION,
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
            "config": Config(s3={"addressing_style": "path"}),
        }
        values.update(overrides)
        return boto3.session.Session().client("s3", **values)

    def settings(self, bucket: str) -> dict[str, Any]:
        """The Settings fields that point the service at this server and bucket."""
        return {
            "storage": "s3",
            "s3_endpoint_url": self.url,
            "s3_bucket": bucket,
            "s3_prefix": PREFIX,
            "s3_region": REGION,
            "s3_access_key_id": self.access_key_id,
            "s3_secret_access_key": self.secret_access_key,
        }


@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """A moto S3 server process; IAM authentication starts after the 3 calls that create our user."""
    pytest.importorskip("moto.server", reason="moto[server] is a dev dependency (pip install -e '.[dev]')")
    import boto3

    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"moto server did not start on port {port}") from None
                time.sleep(0.1)
        iam = boto3.session.Session().client(
            "iam",
            endpoint_url=url,
            region_name=REGION,
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        iam.create_user(UserName="hyv")
        key = iam.create_access_key(UserName="hyv")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="hyv", PolicyName="s3-all", PolicyDocument=json.dumps(policy))
        yield MotoS3(url, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@pytest.fixture
def bucket(moto_s3: MotoS3) -> str:
    name = f"hyv-test-{uuid.uuid4().hex[:12]}"
    moto_s3.client().create_bucket(Bucket=name)
    return name


def make_s3(moto_s3: MotoS3, bucket: str, data_dir: Path, **overrides: Any) -> S3Storage:
    values: dict[str, Any] = {
        "endpoint_url": moto_s3.url,
        "region": REGION,
        "access_key_id": moto_s3.access_key_id,
        "secret_access_key": moto_s3.secret_access_key,
        "prefix": PREFIX,
        "timeout_seconds": 5.0,
        "max_attempts": 2,
    }
    values.update(overrides)
    return S3Storage(bucket, data_dir, **values)


def objects(moto_s3: MotoS3, bucket: str) -> dict[str, bytes]:
    client = moto_s3.client()
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}
