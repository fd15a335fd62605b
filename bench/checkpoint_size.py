# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""SIGTERM to a durable checkpoint of about 1 GB, on local disk and on S3 (moto's server), fork against upstream.

For the grace period a preemption needs (see bench/README.md). Each sample is one training run in a fresh
interpreter (``checkpoint_worker.py``) of a model whose checkpoint (parameters and Adam's two moments) is about
``--size-mb`` MB:

* fork, ``save_on_preemption=True``: the parent sends ``SIGTERM`` at the end of a known batch (the worker waits
  there for it) and polls until the checkpoint is durable: on local disk, ``latest-rank0.pt`` names a complete
  checkpoint file (what ``autoresume`` looks for); on S3, the checkpoint object and ``latest-rank0.pt.symlink`` are
  in the bucket. Also: signal to the trainer's "Preempted" log line, signal to the exit (143).
* fork and upstream 0.32.1 (which has no ``save_on_preemption``), a periodic save of the same size at the same
  batch, no signal: how long it blocks training, and save start to durable (local; S3 object and symlink).

Both packages are installed alone (``python -m forktool target``) and switched with ``PYTHONPATH``, as in
``bench/run.py``; the runs of one round are in a random order. S3 is moto's server, started here on 127.0.0.1 (its
objects live in its memory: each run's objects are deleted after it). Before measuring, the bench waits (bounded by
``--max-wait``) until the 1-minute load average is below ``--load``, and records the load of every sample.

Writes ``bench/results/checkpoint-1gb.{json,md}``; ``--quick`` (100 MB, one round, no load wait) writes to
``build/bench/quick/checkpoint.{json,md}`` instead, as a smoke test of the harness (local disk only unless
``--storage local,s3``: an S3 run takes at least 30 s).
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / 'checkpoint_worker.py'
SIDES = ('upstream', 'fork')
BUCKET = 'bench-checkpoints'
FEATURES = 1024
AT_BATCH = 2  # the save (periodic) or the signal (preemption) comes at the end of this batch; batch 1 warms up
DUMMY_AWS = {'AWS_ACCESS_KEY_ID': 'bench', 'AWS_SECRET_ACCESS_KEY': 'bench', 'AWS_DEFAULT_REGION': 'us-east-1'}

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import machine  # noqa: E402  # isort: skip

# moto's server imports flask_cors only to add CORS headers (for browsers); without the package (moto[server]'s
# extra), a no-op stands in for it. Everything boto3 talks to is moto's real S3 implementation.
_MOTO_SERVER = """
import sys, types
try:
    import flask_cors
except ImportError:
    stub = types.ModuleType('flask_cors')
    stub.CORS = lambda app, *args, **kwargs: app
    sys.modules['flask_cors'] = stub
    print('flask_cors stubbed', flush=True)
from moto.server import main
main(['-H', '127.0.0.1', '-p', sys.argv[1]])
"""


def install_targets(dest: Path) -> dict[str, Path]:
    """Both packages alone, as ``bench/run.py`` installs them (in a folder of their own here)."""
    paths = {}
    for side in SIDES:
        subprocess.run([sys.executable, '-m', 'forktool', 'target', side, '--dest',
                        str(dest / side)],
                       cwd=ROOT,
                       check=True,
                       stdout=subprocess.DEVNULL)
        paths[side] = dest / side
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class MotoServer:
    """moto's S3 server in a process of its own on 127.0.0.1, with one bucket."""

    def __init__(self, log: Path) -> None:
        import boto3

        self.port = free_port()
        self.endpoint = f'http://127.0.0.1:{self.port}'
        self.log = log.open('w')
        env = {**os.environ, **DUMMY_AWS}
        self.proc = subprocess.Popen([sys.executable, '-c', _MOTO_SERVER,
                                      str(self.port)],
                                     stdout=self.log,
                                     stderr=subprocess.STDOUT,
                                     env=env)
        self.client = boto3.client('s3', endpoint_url=self.endpoint, **_boto_credentials())
        deadline = time.monotonic() + 120
        while True:
            try:
                self.client.list_buckets()
                break
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f'moto server did not start; see {log}')
                time.sleep(0.2)
        self.client.create_bucket(Bucket=BUCKET)
        self.flask_cors_stubbed = 'flask_cors stubbed' in log.read_text()

    def keys(self, prefix: str) -> dict[str, int]:
        """The objects under ``prefix`` and their sizes."""
        found = {}
        for page in self.client.get_paginator('list_objects_v2').paginate(Bucket=BUCKET, Prefix=prefix):
            for item in page.get('Contents', []):
                found[item['Key']] = item['Size']
        return found

    def read(self, key: str) -> str:
        return self.client.get_object(Bucket=BUCKET, Key=key)['Body'].read().decode()

    def delete(self, prefix: str) -> None:
        for key in self.keys(prefix):
            self.client.delete_object(Bucket=BUCKET, Key=key)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _boto_credentials() -> dict[str, str]:
    return {
        'aws_access_key_id': DUMMY_AWS['AWS_ACCESS_KEY_ID'],
        'aws_secret_access_key': DUMMY_AWS['AWS_SECRET_ACCESS_KEY'],
        'region_name': DUMMY_AWS['AWS_DEFAULT_REGION'],
    }


class Worker:
    """A ``checkpoint_worker.py`` process; its ``EVENT`` lines are collected by a thread as they come."""

    def __init__(self, target: Path, config: dict, cwd: Path, endpoint: Optional[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith('COMPOSER_') and k != 'PYTHONPATH'}
        env['PYTHONPATH'] = str(target)
        env['TMPDIR'] = str(cwd)  # Composer's local copies of remote checkpoints go to mkdtemp(): removed with cwd
        if endpoint is not None:
            env.update(DUMMY_AWS, S3_ENDPOINT_URL=endpoint)
        self.stderr = (cwd / 'stderr.log').open('w')
        self.proc = subprocess.Popen([sys.executable, str(WORKER), json.dumps(config)],
                                     cwd=cwd,
                                     env=env,
                                     stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE,
                                     stderr=self.stderr,
                                     text=True)
        self.events: list[dict] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr_path = cwd / 'stderr.log'

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith('EVENT '):
                with self._changed:
                    self.events.append(json.loads(line[len('EVENT '):]))
                    self._changed.notify_all()

    def wait_event(self, name: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for e in self.events:
                    if e['event'] == name:
                        return e
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f'no {name!r} from the worker: {self.failure()}')
                self._changed.wait(min(remaining, 0.5))

    def first(self, name: str) -> Optional[dict]:
        with self._changed:
            return next((e for e in self.events if e['event'] == name), None)

    def all(self, name: str) -> list[dict]:
        with self._changed:
            return [e for e in self.events if e['event'] == name]

    def failure(self) -> str:
        self.stderr.flush()
        return f'exit {self.proc.poll()}; stderr:\n{self.stderr_path.read_text()[-3000:]}'

    def finish(self, timeout: float) -> int:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(10)
            self.stderr.close()
        return self.proc.returncode


class Durability:
    """Polls for the moment a resuming run would find the checkpoint: first-seen times (``time.time()``)."""

    def __init__(self, storage: str, folder: Path, s3: Optional[MotoServer], prefix: str) -> None:
        self.storage, self.folder, self.s3, self.prefix = storage, folder, s3, prefix
        self.seen: dict[str, float] = {}
        self.interval = 0.02 if storage == 'local' else 0.05

    def poll(self) -> None:
        now = time.time()
        if self.storage == 'local':
            latest = self.folder / 'latest-rank0.pt'
            try:
                target = self.folder / os.readlink(latest)
            except OSError:
                return
            if target.is_file():
                self.seen.setdefault('latest', now)
            return
        assert self.s3 is not None
        if 'upload_started' not in self.seen:
            uploads = self.s3.client.list_multipart_uploads(Bucket=BUCKET, Prefix=self.prefix + '/')
            if uploads.get('Uploads'):
                self.seen['upload_started'] = now
        keys = self.s3.keys(self.prefix + '/')
        if any(k.endswith('.pt') for k in keys):
            self.seen.setdefault('object', now)
        if any(k.endswith('.symlink') for k in keys):
            self.seen.setdefault('symlink', now)

    def done(self) -> bool:
        return 'latest' in self.seen if self.storage == 'local' else 'symlink' in self.seen

    def watch(self, worker: Worker, timeout: float) -> None:
        """Poll until durable and the worker exited (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exited = worker.proc.poll() is not None
            self.poll()
            if exited:
                return
            time.sleep(self.interval)


def checkpoint_facts(storage: str, folder: Path, s3: Optional[MotoServer], prefix: str) -> dict:
    """Which checkpoint the ``latest`` pointer names, and its size (bytes)."""
    if storage == 'local':
        latest = folder / 'latest-rank0.pt'
        if not latest.is_symlink():
            return {'latest': None}
        target = folder / os.readlink(latest)
        return {
            'latest': target.name,
            'bytes': target.stat().st_size,
            'latest_mtime': os.lstat(latest).st_mtime,
        }
    assert s3 is not None
    keys = s3.keys(prefix + '/')
    symlinks = [k for k in keys if k.endswith('.symlink')]
    if not symlinks:
        return {'latest': None, 'keys': sorted(keys)}
    named = s3.read(symlinks[0]).strip()
    return {'latest': named, 'bytes': keys.get(named), 'symlink_key': symlinks[0]}


def run_sample(
    side: str,
    mode: str,
    storage: str,
    target: Path,
    work: Path,
    s3: Optional[MotoServer],
    hidden: int,
    index: int,
) -> dict:
    """One training run; the figures of one sample, in seconds."""
    cwd = work / f'{index:02d}-{side}-{mode}-{storage}'
    shutil.rmtree(cwd, ignore_errors=True)
    cwd.mkdir(parents=True)
    prefix = f'run{index:02d}'
    folder = cwd / 'checkpoints'
    save_folder = str(folder) if storage == 'local' else f's3://{BUCKET}/{prefix}'
    config = {
        'mode': mode,
        'save_folder': save_folder,
        'features': FEATURES,
        'hidden': hidden,
        'at_batch': AT_BATCH,
        'max_batches': AT_BATCH + (3 if mode == 'preempt' else 1),
    }
    sample: dict[str, Any] = {
        'side': side,
        'mode': mode,
        'storage': storage,
        'load_1min_before': os.getloadavg()[0],
    }
    worker = Worker(target, config, cwd, s3.endpoint if s3 else None)
    durability = Durability(storage, folder, s3, prefix)
    try:
        ready = worker.wait_event('ready', 600)
        sample.update(version=ready['version'], params=ready['params'])
        if mode == 'preempt':
            worker.wait_event('at', 600)
            sent = time.time()
            worker.proc.send_signal(signal.SIGTERM)
            assert worker.proc.stdin is not None
            worker.proc.stdin.write('go\n')
            worker.proc.stdin.flush()
            start = sent
        durability.watch(worker, 600)
        exited = time.time()
        code = worker.finish(30)
        if mode == 'periodic':
            save = worker.first('save')
            if save is None:
                raise RuntimeError(f'no save event from the periodic run: {worker.failure()}')
            start = save['start']
            sample['save_blocking'] = save['end'] - save['start']
        expected = 143 if mode == 'preempt' else 0
        if code != expected:
            raise RuntimeError(f'{side} {mode} {storage}: exit {code}, expected {expected}: {worker.failure()}')
        if not durability.done():
            raise RuntimeError(f'{side} {mode} {storage}: no durable checkpoint seen ({durability.seen})')
        facts = checkpoint_facts(storage, folder, s3, prefix)
        if f'-ba{AT_BATCH}-' not in str(facts['latest']):
            raise RuntimeError(f'{side} {mode} {storage}: latest names {facts}, expected batch {AT_BATCH}')
        sample['checkpoint'] = facts
        sample['batch_seconds'] = [e['seconds'] for e in worker.all('batch')]
        sample['to_exit'] = exited - start
        last_handler = worker.first('atexit_last')
        sample['teardown'] = exited - last_handler['time'] if last_handler else None
        if storage == 'local':
            sample['to_durable'] = durability.seen['latest'] - start
            sample['to_latest_mtime'] = facts['latest_mtime'] - start
        else:
            sample['to_object'] = durability.seen['object'] - start
            started = durability.seen.get('upload_started', durability.seen['object'])  # seen at once if fast
            sample['to_upload_started'] = started - start
            sample['to_durable'] = durability.seen['symlink'] - start
        if mode == 'preempt':
            stop = worker.first('stop_logged')
            sample['to_stop_logged'] = stop['time'] - start if stop else None
        sample['load_1min_after'] = os.getloadavg()[0]
        return sample
    finally:
        if worker.proc.poll() is None:
            worker.finish(0)
        if s3 is not None:
            s3.delete(prefix)
        shutil.rmtree(cwd, ignore_errors=True)


def wait_for_load(threshold: float, max_wait: float) -> dict:
    """Wait (at most ``max_wait`` s) until the 1-minute load average is below ``threshold``."""
    started = time.monotonic()
    first = os.getloadavg()[0]
    while os.getloadavg()[0] >= threshold and time.monotonic() - started < max_wait:
        time.sleep(10)
    load = os.getloadavg()[0]
    return {
        'threshold': threshold,
        'max_wait_s': max_wait,
        'waited_s': time.monotonic() - started,
        'load_1min_at_first_check': first,
        'load_1min_at_start': load,
        'reached': load < threshold,
    }


def _stats(values: list[float]) -> dict:
    return {'median': statistics.median(values), 'min': min(values), 'max': max(values), 'n': len(values)}


#: The rows of the table: (metric, mode, storage, key of the sample). Upstream has only the periodic rows.
ROWS = [
    ('SIGTERM to checkpoint durable (latest-rank0.pt names the complete file)', 'preempt', 'local', 'to_durable'),
    ('SIGTERM to "Preempted" log line (the stop began)', 'preempt', 'local', 'to_stop_logged'),
    ('SIGTERM to exit 143', 'preempt', 'local', 'to_exit'),
    ('of which: exit handlers done to exit (interpreter teardown)', 'preempt', 'local', 'teardown'),
    ('periodic save: training blocked', 'periodic', 'local', 'save_blocking'),
    ('periodic save: start to durable (latest-rank0.pt names the file)', 'periodic', 'local', 'to_durable'),
    ('SIGTERM to multipart upload started (uploader process spawned)', 'preempt', 's3', 'to_upload_started'),
    ('SIGTERM to checkpoint object in the bucket', 'preempt', 's3', 'to_object'),
    ('SIGTERM to checkpoint durable (latest-rank0.pt.symlink in the bucket)', 'preempt', 's3', 'to_durable'),
    ('SIGTERM to exit 143', 'preempt', 's3', 'to_exit'),
    ('of which: exit handlers done to exit (interpreter teardown)', 'preempt', 's3', 'teardown'),
    ('periodic save: training blocked (local write + staging copy)', 'periodic', 's3', 'save_blocking'),
    ('periodic save: start to multipart upload started', 'periodic', 's3', 'to_upload_started'),
    ('periodic save: start to checkpoint object in the bucket', 'periodic', 's3', 'to_object'),
    ('periodic save: start to durable (latest-rank0.pt.symlink in the bucket)', 'periodic', 's3', 'to_durable'),
]


def summarize(samples: list[dict]) -> list[dict]:
    rows = []
    for metric, mode, storage, key in ROWS:
        row: dict[str, Any] = {'metric': metric, 'storage': storage, 'mode': mode, 'unit': 's'}
        for side in SIDES:
            values = [s[key] for s in samples if (s['side'], s['mode'], s['storage']) == (side, mode, storage)]
            values = [v for v in values if v is not None]
            if values:
                row[side] = _stats(values)
                row.setdefault('values', {})[side] = values
        if 'fork' in row and 'upstream' in row:
            row['ratio'] = row['fork']['median'] / row['upstream']['median']
        rows.append(row)
    return rows


def git_commit() -> dict:
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'],
                           cwd=ROOT,
                           capture_output=True,
                           text=True).stdout.strip()
    return {'commit': head, 'tracked_files_modified': bool(dirty)}


def write_markdown(report: dict, path: Path) -> None:
    m, c = report['machine'], report['config']
    sizes = report['checkpoint_bytes']
    load = report['load']
    lines = [
        f'Measured {m["date"]} at commit `{m["commit"][:12]}` on {m["cores"]} cores, {m["processor"]}, '
        f'{m["memory_gib"]:.0f} GiB RAM, Python {m["python"]}, torch {m["torch"]} '
        f'({"quick mode" if report["quick"] else "full run"}; `bench/checkpoint_size.py`).',
        '',
        f'Checkpoint: {c["params"]:,} parameters (Linear {FEATURES}x{c["hidden"]} + Linear {c["hidden"]}x2) with '
        f'Adam: {_size(sizes["local"])} on disk, {_size(sizes["s3"])} in S3 (fork and upstream alike). '
        f'{c["repeats"]} runs per row; median (min-max) in seconds. Signal (preemption) or save (periodic) at the '
        f'end of batch {AT_BATCH}; the preemption worker waits there for the signal, so no batch in flight is '
        f'included (add one batch: {report["batch_seconds_median"]:.2f} s median here). S3 is moto '
        f'{report["moto_version"]}\'s server on 127.0.0.1.',
        '',
        f'Load average (1 min): {load["load_1min_at_start"]:.2f} when measuring began (threshold '
        f'{load["threshold"]}, waited {load["waited_s"]:.0f} s); per sample {load["samples"]["min"]:.2f}-'
        f'{load["samples"]["max"]:.2f} (median {load["samples"]["median"]:.2f}). The machine is shared: other '
        'trainings may have run meanwhile.',
        '',
        '| storage | metric | upstream 0.32.1 | fork | ratio fork/upstream |',
        '| --- | --- | --- | --- | --- |',
    ]
    for r in report['results']:
        if 'fork' not in r and 'upstream' not in r:
            continue  # a storage not measured in this run
        cells = []
        for side in SIDES:
            if side in r:
                s = r[side]
                cells.append(f'{s["median"]:.2f} ({s["min"]:.2f}-{s["max"]:.2f})')
            else:
                cells.append('n/a (no save_on_preemption)' if side == 'upstream' else 'n/a')
        ratio = f'{r["ratio"]:.2f}' if 'ratio' in r else 'n/a'
        storage = 'local disk' if r['storage'] == 'local' else 'S3 (moto)'
        lines.append(f'| {storage} | {r["metric"]} | {cells[0]} | {cells[1]} | {ratio} |')
    lines += [
        '',
        '"durable": the moment a resuming run (`autoresume`) would find the checkpoint, polled by the bench every '
        '20 ms (local) or 50 ms (S3). "training blocked": from the end of the batch to the start of the next one. '
        'Remote uploads run in processes that Composer spawns on the first upload (each imports Composer), and '
        'Composer uploads `latest-rank0.pt.symlink` only once another spawned process has seen the checkpoint '
        'object, which looks at once and then every 30 s (`CheckpointSaver`, the same in both packages). '
        '"interpreter teardown": from the last exit handler to the end of the process (Python finalizing the modules '
        'that `import composer` loads); the checkpoint is durable before it starts.',
    ]
    quiet = quietest_round(report['samples'])
    if quiet is not None:
        round_, load_max = quiet
        lines += [
            '',
            f'The quietest round (round {round_ + 1}, 1-minute load at most {load_max:.2f} before its runs), one run per '
            'row:',
            '',
            '| storage | metric | upstream 0.32.1 | fork |',
            '| --- | --- | --- | --- |',
        ]
        for metric, mode, storage, key in ROWS:
            cells = []
            for side in SIDES:
                value = next((
                    s.get(key)
                    for s in report['samples']
                    if s['round'] == round_ and (s['side'], s['mode'], s['storage']) == (side, mode, storage)
                ), None)
                cells.append('n/a' if value is None else f'{value:.2f}')
            if cells != ['n/a', 'n/a']:
                storage_name = 'local disk' if storage == 'local' else 'S3 (moto)'
                lines.append(f'| {storage_name} | {metric} | {cells[0]} | {cells[1]} |')
    path.write_text('\n'.join(lines) + '\n')


def quietest_round(samples: list[dict]) -> Optional[tuple[int, float]]:
    """The round whose highest per-sample load was lowest, and that load (None with a single round)."""
    rounds = sorted({s['round'] for s in samples})
    if len(rounds) < 2:
        return None
    peaks = {r: max(s['load_1min_before'] for s in samples if s['round'] == r) for r in rounds}
    best = min(peaks, key=lambda r: peaks[r])
    return best, peaks[best]


def _size(value: Optional[float]) -> str:
    return 'n/a' if value is None else f'{value / 1e9:.3f} GB ({value / 2**30:.3f} GiB, {int(value):,} bytes)'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='100 MB, one round, no load wait: a smoke test')
    parser.add_argument('--size-mb', type=float, default=None, help='checkpoint size to aim at (default 1000)')
    parser.add_argument('--repeats', type=int, default=None, help='runs per row (default 3)')
    parser.add_argument('--load', type=float, default=1.5, help='wait until the 1-minute load is below this')
    parser.add_argument('--max-wait', type=float, default=None, help='longest wait for the load (default 1200 s)')
    parser.add_argument(
        '--storage',
        default=None,
        help='comma-separated: local, s3 (default both; local only with --quick, which then runs in '
        'under a minute: an S3 run takes at least 30 s, see the notes in the results)',
    )
    args = parser.parse_args()
    size_mb = args.size_mb or (100.0 if args.quick else 1000.0)
    repeats = args.repeats or (1 if args.quick else 3)
    max_wait = args.max_wait if args.max_wait is not None else (0.0 if args.quick else 1200.0)
    out = ROOT / 'build' / 'bench' / 'quick' if args.quick else ROOT / 'bench' / 'results'
    stem = 'checkpoint' if args.quick else 'checkpoint-1gb'
    work = ROOT / 'build' / 'bench' / 'checkpoint'
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    # parameters + Adam's two moments, float32: 12 bytes per parameter; two Linear layers, features -> hidden -> 2
    hidden = max(8, round(size_mb * 1e6 / 12 / (FEATURES + 3)))

    started = time.perf_counter()
    commit = git_commit()  # the tree the targets are built from (HEAD may move while the bench runs)
    paths = install_targets(work / 'targets')
    storages = (args.storage or ('local' if args.quick else 'local,s3')).split(',')
    if not set(storages) <= {'local', 's3'}:
        parser.error(f'--storage: local and/or s3, not {args.storage}')
    plan = [(side, mode, storage)
            for storage in storages
            for side, mode in (('fork', 'preempt'), ('fork', 'periodic'), ('upstream', 'periodic'))]
    s3 = MotoServer(work / 'moto.log') if 's3' in storages else None
    samples = []
    try:
        load = wait_for_load(args.load, max_wait)
        print(
            f'load {load["load_1min_at_start"]:.2f} after {load["waited_s"]:.0f} s; {len(plan)} x {repeats} runs',
            flush=True,
        )
        rng = random.Random(0)
        for round_ in range(repeats):
            for side, mode, storage in rng.sample(plan, len(plan)):
                sample = run_sample(side, mode, storage, paths[side], work, s3, hidden, len(samples))
                sample['round'] = round_
                samples.append(sample)
                figures = {k: round(v, 3) for k, v in sample.items() if k.startswith(('to_', 'save_')) and v}
                print(f'{side:8} {mode:8} {storage:5} {figures} load {sample["load_1min_before"]:.2f}', flush=True)
        flask_cors_stubbed = s3.flask_cors_stubbed if s3 else None
    finally:
        if s3 is not None:
            s3.stop()

    from importlib.metadata import version
    sizes = {
        storage: next((s['checkpoint']['bytes'] for s in samples if s['storage'] == storage), None)
        for storage in ('local', 's3')
    }
    loads = [s['load_1min_before'] for s in samples]
    report = {
        'machine': {
            **machine(),
            **commit,
            'memory_gib': os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30,
        },
        'quick': args.quick,
        'config': {
            'size_mb_target': size_mb,
            'features': FEATURES,
            'hidden': hidden,
            'params': samples[0]['params'],
            'at_batch': AT_BATCH,
            'repeats': repeats,
            'versions': {
                side: next(s['version'] for s in samples if s['side'] == side) for side in SIDES
            },
        },
        'checkpoint_bytes': sizes,
        'moto_version': version('moto'),
        'moto_flask_cors_stubbed': flask_cors_stubbed,
        'load': {
            **load,
            'samples': _stats(loads),
        },
        'batch_seconds_median': statistics.median(b for s in samples for b in s['batch_seconds'][1:]),
        'results': summarize(samples),
        'samples': samples,
        'wall_seconds': time.perf_counter() - started,
    }
    (out / f'{stem}.json').write_text(json.dumps(report, indent=2) + '\n')
    write_markdown(report, out / f'{stem}.md')
    print((out / f'{stem}.md').read_text())
    print(f'Results in {out / stem}.{{json,md}} ({report["wall_seconds"]:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
