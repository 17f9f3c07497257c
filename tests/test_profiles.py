"""Execution profiles: the cloud profile (Kubernetes executor + S3 storage) plans the full DAG in a dry run.

A dry run with a storage plugin is not offline: Snakemake asks the bucket whether every output already exists
(HEAD bucket, HEAD object, ListObjectsV2) and boto3 refuses to send a request without credentials
("NoCredentialsError: Unable to locate credentials"). So the test gives the S3 plugin dummy credentials and points
it (--storage-s3-endpoint-url) at a tiny S3 endpoint served here: a bucket that holds the uploaded model
(models/...) and nothing else, as on a first run. Nothing leaves this machine; the Kubernetes executor is never
started by a dry run, so no kube config is needed.
"""

from __future__ import annotations

import email.utils
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
CLOUD = REPO / "profiles" / "cloud" / "config.yaml"


class _FakeS3(http.server.BaseHTTPRequestHandler):
    """Path-style S3: HEAD bucket, HEAD/GET object, ListObjectsV2 over a fixed {key: Path} map."""

    objects: dict[str, Path] = {}
    requests: list[str] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _split(self):
        parts = urlsplit(self.path)
        bucket, _, key = unquote(parts.path).lstrip("/").partition("/")
        return bucket, key, parse_qs(parts.query)

    def _reply(self, code, body=b"", headers=None):
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _object_headers(self, path: Path):
        stat = path.stat()
        return {
            "Content-Type": "application/octet-stream",
            "Last-Modified": email.utils.formatdate(stat.st_mtime, usegmt=True),
            "ETag": f'"{stat.st_size:x}{int(stat.st_mtime):x}"',
        }

    def do_HEAD(self):
        bucket, key, _ = self._split()
        self.requests.append(f"HEAD {bucket}/{key}")
        if not key:
            return self._reply(200)
        path = self.objects.get(key)
        if path is None:
            return self._reply(404)
        headers = self._object_headers(path)
        self.send_response(200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.end_headers()

    def do_GET(self):
        bucket, key, query = self._split()
        self.requests.append(f"GET {bucket}/{key}?{'&'.join(sorted(query))}")
        if key:
            path = self.objects.get(key)
            if path is None:
                body = b'<?xml version="1.0"?><Error><Code>NoSuchKey</Code><Message>absent</Message></Error>'
                return self._reply(404, body, {"Content-Type": "application/xml"})
            return self._reply(200, path.read_bytes(), self._object_headers(path))
        prefix = query.get("prefix", [""])[0]
        contents = "".join(
            f"<Contents><Key>{escape(k)}</Key><LastModified>"
            f"{email.utils.formatdate(p.stat().st_mtime, usegmt=True)}</LastModified>"
            f"<Size>{p.stat().st_size}</Size><StorageClass>STANDARD</StorageClass></Contents>"
            for k, p in sorted(self.objects.items())
            if k.startswith(prefix)
        )
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix><MaxKeys>1000</MaxKeys>"
            f"<IsTruncated>false</IsTruncated>{contents}</ListBucketResult>"
        ).encode()
        self._reply(200, body, {"Content-Type": "application/xml"})


@pytest.fixture()
def fake_s3():
    handler = type("Handler", (_FakeS3,), {})
    # The bucket holds what a user uploads before the first run: the model (docs/cloud.md).
    handler.objects = {p.relative_to(REPO).as_posix(): p for p in (REPO / "models").rglob("*") if p.is_file()}
    handler.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def _dummy_credentials_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SNAKEMAKE_STORAGE_S3_"))}
    env.update(
        SNAKEMAKE_STORAGE_S3_ACCESS_KEY="dummy-access-key",  # never checked by the fake endpoint
        SNAKEMAKE_STORAGE_S3_SECRET_KEY="dummy-secret-key",
        AWS_CONFIG_FILE=os.devnull,  # ignore a developer's ~/.aws
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


def test_cloud_profile_names_installed_pinned_plugins():
    profile = yaml.safe_load(CLOUD.read_text())
    assert profile["executor"] == "kubernetes"
    assert profile["default-storage-provider"] == "s3"
    assert profile["default-storage-prefix"].startswith("s3://")
    pins = (REPO / "requirements.in").read_text().splitlines()
    lock = (REPO / "requirements.lock").read_text().splitlines()
    for package in ("snakemake-executor-plugin-kubernetes", "snakemake-storage-plugin-s3"):
        assert any(line.startswith(f"{package}==") for line in pins), f"{package} not pinned in requirements.in"
        assert any(line.startswith(f"{package}==") for line in lock), f"{package} not in requirements.lock"
    import snakemake_executor_plugin_kubernetes  # noqa: F401  (installed, not just listed)
    import snakemake_storage_plugin_s3  # noqa: F401


def test_cloud_profile_dry_run_plans_the_full_dag(fake_s3):
    endpoint, handler = fake_s3
    result = subprocess.run(
        [SNAKEMAKE, "-n", "--profile", "profiles/cloud", "--storage-s3-endpoint-url", endpoint, "--quiet", "rules"],
        cwd=REPO,
        env=_dummy_credentials_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for rule in ("phantom", "predict_block", "segment_fragments", "skeletonize_block", "synapses_block", "connectome"):
        assert rule in result.stdout, output
    # the plan came from the bucket: Snakemake asked it about outputs under the default storage prefix
    assert any(r.startswith("HEAD connectomix-results/results/") for r in handler.requests), handler.requests
    assert any(r.startswith("HEAD connectomix-results/models/") for r in handler.requests), handler.requests


def test_cloud_dry_run_without_credentials_says_so(fake_s3):
    """Documents why the test above needs dummy credentials (see docs/cloud.md)."""
    endpoint, _ = fake_s3
    env = _dummy_credentials_env()
    del env["SNAKEMAKE_STORAGE_S3_ACCESS_KEY"], env["SNAKEMAKE_STORAGE_S3_SECRET_KEY"]
    result = subprocess.run(
        [SNAKEMAKE, "-n", "--profile", "profiles/cloud", "--storage-s3-endpoint-url", endpoint],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "NoCredentialsError" in result.stdout + result.stderr
