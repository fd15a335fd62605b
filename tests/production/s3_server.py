# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""A real S3 API on loopback for the tests: moto's S3 server in its own process, and a proxy that can stall uploads.

:func:`moto_server` starts ``python -m moto.server`` (moto's Flask app serving the S3 REST API over HTTP) on
``127.0.0.1`` at a free port, as a separate process: the training subprocesses reach it through real sockets, and the
test process's GIL never slows it down. :class:`S3Bucket` is one bucket on it, with the environment that points
Composer's :class:`~composer.utils.object_store.S3ObjectStore` at it (``S3_ENDPOINT_URL`` and dummy credentials) and
boto3 helpers to read what landed there. :class:`StallingProxy` is a TCP proxy on loopback between Composer and moto
that forwards every byte until a request line matches a pattern, then holds that connection: an upload caught in
flight for as long as the test wants.

Needs moto's server extra (``moto[server]``: Flask and flask-cors); without it the fixtures skip, saying so.
"""

import contextlib
import importlib.util
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional

import pytest

#: The region every client (the tests' and Composer's) uses; moto accepts any.
REGION = 'us-east-1'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _client(endpoint: str):
    import boto3
    from botocore.config import Config
    return boto3.session.Session().client(
        's3',
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id='testing',
        aws_secret_access_key='testing',
        config=Config(retries={'max_attempts': 2}, connect_timeout=5, read_timeout=30),
    )


class MotoServer:
    """moto's S3 server, running as a child process of the test.

    Args:
        endpoint: its URL, ``http://127.0.0.1:<port>``.
        proc: the server process.
        log: the file that holds its output.
    """

    def __init__(self, endpoint: str, proc: subprocess.Popen, log: Path):
        self.endpoint = endpoint
        self.proc = proc
        self.log = log
        self.client = _client(endpoint)

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(':', 1)[1])

    def bucket(self) -> 'S3Bucket':
        """A new, empty bucket with a unique name."""
        name = f'composer-{uuid.uuid4().hex[:12]}'
        self.client.create_bucket(Bucket=name)
        return S3Bucket(self, name)

    def stop(self, timeout: float = 10) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``timeout`` s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)


class S3Bucket:
    """One bucket on a :class:`MotoServer`: what to give Composer, and what is in it.

    Args:
        server: the server.
        name: the bucket's name.
        endpoint: the endpoint Composer is to use (the server's, or a :class:`StallingProxy` in front of it).
    """

    def __init__(self, server: MotoServer, name: str, endpoint: Optional[str] = None):
        self.server = server
        self.name = name
        self.endpoint = endpoint or server.endpoint
        self.client = server.client  # the tests read the bucket directly, never through a proxy

    def through(self, endpoint: str) -> 'S3Bucket':
        """The same bucket, reached by Composer through ``endpoint`` (a proxy)."""
        return S3Bucket(self.server, self.name, endpoint)

    def uri(self, path: str = '') -> str:
        return f's3://{self.name}/{path}' if path else f's3://{self.name}'

    @property
    def env(self) -> dict[str, str]:
        """The environment of a training process that saves to this bucket.

        ``S3_ENDPOINT_URL`` (read by Composer's ``S3ObjectStore``), dummy credentials and region; no shared AWS
        config or credentials files, no instance metadata, and no HTTP proxy for loopback.
        """
        return {
            'S3_ENDPOINT_URL': self.endpoint,
            'AWS_ACCESS_KEY_ID': 'testing',
            'AWS_SECRET_ACCESS_KEY': 'testing',
            'AWS_DEFAULT_REGION': REGION,
            'AWS_CONFIG_FILE': os.devnull,
            'AWS_SHARED_CREDENTIALS_FILE': os.devnull,
            'AWS_EC2_METADATA_DISABLED': 'true',
            'NO_PROXY': '127.0.0.1,localhost',
            'no_proxy': '127.0.0.1,localhost',
        }

    def keys(self, prefix: str = '') -> list[str]:
        """The keys of the (complete) objects under ``prefix``, sorted."""
        found: list[str] = []
        for page in self.client.get_paginator('list_objects_v2').paginate(Bucket=self.name, Prefix=prefix):
            found.extend(item['Key'] for item in page.get('Contents', []))
        return sorted(found)

    def get(self, key: str) -> bytes:
        """The bytes of the object ``key``."""
        return self.client.get_object(Bucket=self.name, Key=key)['Body'].read()

    def download(self, key: str, path: Path) -> Path:
        """Download ``key`` to ``path``; return ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.get(key))
        return path

    def uploads_in_progress(self) -> dict[str, list[int]]:
        """The multipart uploads begun and neither completed nor aborted: key -> the part numbers received."""
        uploads = self.client.list_multipart_uploads(Bucket=self.name).get('Uploads', [])
        return {
            upload['Key']: [
                part['PartNumber'] for part in self.client.list_parts(
                    Bucket=self.name,
                    Key=upload['Key'],
                    UploadId=upload['UploadId'],
                ).get('Parts', [])
            ] for upload in uploads
        }


def _start(log: Path, attempts: int = 3, timeout: float = 60) -> MotoServer:
    """Start moto's server at a free port; retry another port if one was taken meanwhile."""
    failures = []
    for _ in range(attempts):
        port = _free_port()
        endpoint = f'http://127.0.0.1:{port}'
        command = [sys.executable, '-m', 'moto.server', '-H', '127.0.0.1', '-p', str(port)]
        with open(log, 'ab') as out:
            proc = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={
                    **os.environ,
                    'NO_PROXY': '127.0.0.1,localhost',
                    'no_proxy': '127.0.0.1,localhost',
                },
            )
        server = MotoServer(endpoint, proc, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                server.client.list_buckets()
                return server
            except Exception:  # not listening yet
                time.sleep(0.2)
        server.stop()
        failures.append(f'port {port}: exit {proc.returncode}')
    pytest.fail(f'moto server did not start ({failures}):\n{log.read_text()}')


@contextlib.contextmanager
def running_moto_server(directory: Path) -> Iterator[MotoServer]:
    """moto's S3 server for the duration of the ``with`` block; its output goes to ``directory / 'moto.log'``."""
    if importlib.util.find_spec('flask') is None or importlib.util.find_spec('flask_cors') is None:
        pytest.skip("moto's server needs the moto[server] extra (Flask and flask-cors), which is not installed")
    server = _start(directory / 'moto.log')
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope='module')
def moto_server(tmp_path_factory) -> Iterator[MotoServer]:
    """moto's S3 server on ``127.0.0.1``, one per test module, stopped at the end (SIGTERM, then SIGKILL)."""
    with running_moto_server(tmp_path_factory.mktemp('moto')) as server:
        yield server


@pytest.fixture
def s3_bucket(moto_server: MotoServer) -> S3Bucket:
    """A new, empty bucket on :func:`moto_server`."""
    return moto_server.bucket()


class StallingProxy:
    """A TCP proxy on ``127.0.0.1`` in front of ``upstream``: it forwards both ways, byte for byte, until it stalls.

    Once ``stall`` (a regular expression over the bytes the client sends) matches, the proxy forwards nothing more
    from that connection and sends nothing back (the client waits as on a stuck upload) and sets :attr:`stalled`.
    Other connections go on. Runs on daemon threads of the test process; :meth:`close` ends them.

    Args:
        upstream_port: the port of the server on ``127.0.0.1``.
        stall: the pattern; ``None`` to forward everything.
    """

    def __init__(self, upstream_port: int, stall: Optional[bytes] = None):
        self.upstream_port = upstream_port
        self.pattern = re.compile(stall) if stall is not None else None
        self.stalled = threading.Event()
        self.matched: list[bytes] = []
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(('127.0.0.1', 0))
        self._listener.settimeout(0.5)
        self.endpoint = f'http://127.0.0.1:{self._listener.getsockname()[1]}'
        threading.Thread(target=self._accept, daemon=True, name='StallingProxy.accept').start()

    def _track(self, *sockets: socket.socket) -> None:
        with self._lock:
            self._sockets.extend(sockets)

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            try:
                upstream = socket.create_connection(('127.0.0.1', self.upstream_port), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._track(client, upstream)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, destination: socket.socket, from_client: bool) -> None:
        tail = b''  # the end of the previous chunk, for a pattern split between two reads
        try:
            while True:
                data = source.recv(1 << 16)
                if not data:
                    break
                if from_client and self.pattern is not None:
                    match = self.pattern.search(tail + data)
                    if match:
                        self.matched.append(match.group(0))
                        self.stalled.set()
                        self._closing.wait()  # hold the connection until the proxy closes
                        return
                    tail = (tail + data)[-4096:]
                destination.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, destination):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop accepting and close every connection (a stalled client sees its connection reset)."""
        self._closing.set()
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.close()


@pytest.fixture
def stalling_proxy(moto_server: MotoServer) -> Iterator[type[StallingProxy]]:
    """``stalling_proxy(stall=None)``: a :class:`StallingProxy` in front of :func:`moto_server`, closed at teardown."""
    proxies: list[StallingProxy] = []

    def make(stall: Optional[bytes] = None) -> StallingProxy:
        proxy = StallingProxy(moto_server.port, stall)
        proxies.append(proxy)
        return proxy

    yield make  # type: ignore[misc]
    for proxy in proxies:
        proxy.close()
