"""Benchmarks: the fork against upstream 0.32.1, side by side in one run (``make bench``; see bench/README.md).

Both packages are installed alone (``--no-deps --target``) under ``build/bench/`` and switched with ``PYTHONPATH``, so
they share this interpreter and its torch: only the ``composer`` package differs. Samples alternate between the two.
Writes ``bench/results/latest.{json,md,png}`` (or ``build/bench/quick/`` with ``--quick``); ``--check`` exits non-zero
when a target is missed beyond the measured noise.
"""

import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / 'worker.py'
TARGETS = ROOT / 'build' / 'bench'
SIDES = ('upstream', 'fork')


def install_targets() -> dict[str, Path]:
    paths = {}
    for side in SIDES:
        dest = TARGETS / side
        subprocess.run([sys.executable, '-m', 'forktool', 'target', side, '--dest',
                        str(dest)],
                       cwd=ROOT,
                       check=True,
                       stdout=subprocess.DEVNULL)
        paths[side] = dest
    return paths


def env_for(path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ('COMPOSER_SIGNAL_HANDLING', 'PYTHONPATH')}
    env['PYTHONPATH'] = str(path)
    return env


def launcher_command(nproc: int = 2) -> list[str]:
    """The ``composer`` launcher of whichever package ``PYTHONPATH`` selects, with ``nproc`` CPU ranks (gloo)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    launcher = [sys.executable, '-m', 'composer.cli.launcher', '-n', str(nproc), '--master_addr', '127.0.0.1']
    return launcher + ['--master_port', str(port)]


def run_worker(path: Path, *args: str, timeout: float = 600, ranks: int = 1) -> dict:
    prefix = launcher_command(ranks) if ranks > 1 else [sys.executable]
    env = env_for(path)
    if ranks > 1:  # one intra-op thread per rank: ranks x threads beyond the cores only adds noise
        env['OMP_NUM_THREADS'] = '1'
    proc = subprocess.run([*prefix, str(WORKER), *args],
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=timeout,
                          cwd=TARGETS)
    for line in proc.stdout.splitlines():
        if line.startswith('BENCH '):
            return json.loads(line[len('BENCH '):])
    raise RuntimeError(f'worker {args} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}')


def sigterm_to_exit(path: Path) -> float:
    proc = subprocess.Popen([sys.executable, str(WORKER), 'sigterm-child'],
                            env=env_for(path),
                            cwd=TARGETS,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL,
                            text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith('TRAINING'):
                break
        time.sleep(0.2)
        start = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        elapsed = time.perf_counter() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 143:
        raise RuntimeError(f'SIGTERM child exited with {proc.returncode}, expected 143')
    return elapsed


def preemption_loss(path: Path, side: str, signal_at: int, save_every: int) -> dict:
    """SIGTERM inside batch ``signal_at + 1``; what the checkpoint that autoresume would pick holds afterwards.

    Upstream checkpoints every ``save_every`` batches; the fork uses ``save_on_preemption=True`` instead.
    """
    work = TARGETS / f'preempt-{side}'
    shutil.rmtree(work, ignore_errors=True)
    folder = work / 'checkpoints'
    folder.mkdir(parents=True)
    mode = 'preempt' if side == 'fork' else 'save'
    command = [sys.executable, str(WORKER), 'preempted-child', str(signal_at), mode, str(save_every), str(folder)]
    proc = subprocess.run(
        command,
        env=env_for(path),
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 143:
        raise RuntimeError(f'preempted child ({side}) exited with {proc.returncode}:\n{proc.stderr[-3000:]}')
    sent = json.loads((work / 'signal.json').read_text())
    latest = folder / 'latest-rank0.pt'
    if latest.exists():
        target = folder / os.readlink(latest)
        match = re.search(r'-ba(\d+)-', target.name)
        assert match is not None, target
        checkpoint_batch = int(match.group(1))
        written_after = target.stat().st_mtime - sent['time']
    else:  # no checkpoint yet: autoresume starts from scratch
        checkpoint_batch, written_after = 0, float('nan')
    return {
        'lost_batches': max(0, sent['completed_batches'] - checkpoint_batch),
        'checkpoint_after_batches': checkpoint_batch - sent['completed_batches'],
        'checkpoint_after_seconds': written_after,
    }


def alternate(samples: int, measure: Callable[[str], list[float]]) -> dict[str, list[float]]:
    """Collect ``samples`` values per side, alternating sides (in random order within each pair)."""
    values: dict[str, list[float]] = {side: [] for side in SIDES}
    rng = random.Random(0)
    while min(len(v) for v in values.values()) < samples:
        for side in rng.sample(SIDES, 2):
            values[side].extend(measure(side))
    return values


def bootstrap_ratio(fork: list[float], upstream: list[float], reps: int = 2000) -> tuple[float, float]:
    """95 % bootstrap interval of median(fork) / median(upstream)."""
    rng = random.Random(1)
    ratios = sorted(
        statistics.median(rng.choices(fork, k=len(fork))) / statistics.median(rng.choices(upstream, k=len(upstream)))
        for _ in range(reps)
    )
    return ratios[int(0.025 * reps)], ratios[int(0.975 * reps) - 1]


def summarize(
    name: str,
    unit: str,
    values: dict[str, list[float]],
    target: str,
    limit: float,
    higher_is_better: bool = False,
) -> dict:
    fork, upstream = values['fork'], values['upstream']
    ratio = statistics.median(fork) / statistics.median(upstream)
    low, high = bootstrap_ratio(fork, upstream)
    if higher_is_better:
        met = ratio >= limit
        missed_beyond_noise = high < limit
    else:
        met = ratio <= limit
        missed_beyond_noise = low > limit
    return {
        'metric': name,
        'unit': unit,
        'samples': {
            side: len(v) for side, v in values.items()
        },
        'upstream': _stats(upstream),
        'fork': _stats(fork),
        'ratio': ratio,
        'ratio_ci95': [low, high],
        'target': target,
        'met': met,
        'missed_beyond_noise': missed_beyond_noise,
        'values': values,
    }


def side_by_side(name: str, unit: str, values: dict[str, list[float]], target: str, met: bool) -> dict:
    """A row with both sides' figures where a ratio means nothing (e.g. the fork's figure is 0 by design)."""
    return {
        'metric': name,
        'unit': unit,
        'samples': {
            side: len(v) for side, v in values.items()
        },
        'upstream': _stats(values['upstream']),
        'fork': _stats(values['fork']),
        'target': target,
        'met': met,
        'missed_beyond_noise': not met,
        'values': values,
    }


def absolute(name: str, unit: str, values: list[float], target: str, limit: float) -> dict:
    median = statistics.median(values)
    return {
        'metric': name,
        'unit': unit,
        'samples': {
            'fork': len(values),
        },
        'fork': _stats(values),
        'target': target,
        'values': {
            'fork': values,
        },
        'met': median <= limit,
        # Absolute targets: missed beyond noise if even the fastest sample misses.
        'missed_beyond_noise': min(values) > limit,
    }


def _stats(values: list[float]) -> dict:
    return {'median': statistics.median(values), 'min': min(values), 'max': max(values)}


def machine() -> dict:
    torch_version = subprocess.run([sys.executable, '-c', 'import torch; print(torch.__version__)'],
                                   capture_output=True,
                                   text=True).stdout.strip()
    return {
        'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        'cores': os.cpu_count(),
        'python': platform.python_version(),
        'torch': torch_version,
        'platform': platform.platform(),
        'processor': platform.machine(),
    }


def build_time(samples: int) -> list[float]:
    times = []
    out = TARGETS / 'wheel-timing'
    pip_wheel = [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '--quiet']
    for _ in range(samples):
        start = time.perf_counter()
        subprocess.run(pip_wheel + ['-w', str(out), str(ROOT)], check=True, cwd=TARGETS)
        times.append(time.perf_counter() - start)
    return times


def run(quick: bool) -> dict:
    n = {
        'import': 2,
        'construct': 6,
        'fit': 2,
        'fit_batches': 60,
        'ddp_fit': 1,
        'sigterm': 2,
        'preempt': 2,
        'acquire': 3,
        'build': 1,
    } if quick else {
        'import': 20,
        'construct': 60,
        'fit': 8,
        'fit_batches': 300,
        'ddp_fit': 8,
        'sigterm': 10,
        'preempt': 10,
        'acquire': 7,
        'build': 3,
    }
    paths = install_targets()
    results = []

    print('import composer ...', flush=True)
    imports = alternate(n['import'], lambda side: [run_worker(paths[side], 'import')['seconds']])
    results.append(summarize('import composer', 's', imports, 'median ratio <= 1.02', 1.02))

    print('Trainer construction + close ...', flush=True)
    per_round = max(1, n['construct'] // 6)  # 6 processes per side, alternating
    constructs = alternate(n['construct'], lambda side: run_worker(paths[side], 'construct', str(per_round))['seconds'])
    results.append(summarize('Trainer construction + close', 's', constructs, 'median ratio <= 1.02', 1.02))

    print('signal acquire + release ...', flush=True)
    micro = run_worker(paths['fork'], 'acquire', str(n['acquire']))
    results.append(
        absolute('signal acquire + release (install + restore)', 'us', micro['install_restore_us'], '<= 20 us', 20.0),
    )
    results.append(absolute('signal acquire + release (already held)', 'us', micro['shared_us'], 'report', 1e9))

    print('fit() throughput and peak RSS ...', flush=True)
    fits: dict[str, list[dict]] = {side: [] for side in SIDES}

    def one_fit(side: str) -> list[float]:
        fits[side].append(run_worker(paths[side], 'fit', str(n['fit_batches'])))
        return [fits[side][-1]['batches_per_second']]

    throughput = alternate(n['fit'], one_fit)
    results.append(
        summarize(
            f'fit() throughput ({n["fit_batches"]} batches)',
            'batches/s',
            throughput,
            'ratio >= 0.99',
            0.99,
            higher_is_better=True,
        ),
    )
    rss_metrics = {'rss_after_import_mib': 'peak RSS after import', 'rss_after_fit_mib': 'peak RSS after fit()'}
    for key, label in rss_metrics.items():
        rss = {side: [f[key] for f in fits[side]] for side in SIDES}
        results.append(summarize(label, 'MiB', rss, 'ratio <= 1.01', 1.01))

    # save_on_preemption: the fork with it on against upstream with the same checkpointing (save_folder, a
    # save_interval far in the future); and both modes on 2 gloo ranks under the composer launcher.
    print('fit() throughput with save_on_preemption, 1 process and 2 ranks ...', flush=True)
    fit_rows = [  # label, ranks, worker mode for upstream and for the fork
        ('fit() throughput, save_on_preemption=True (1 process)', 1, ('save', 'preempt')),
        ('fit() throughput (2 ranks, composer launcher)', 2, ('plain', 'plain')),
        ('fit() throughput, save_on_preemption=True (2 ranks)', 2, ('save', 'preempt')),
    ]
    for label, ranks, (upstream_mode, fork_mode) in fit_rows:
        modes = {'upstream': upstream_mode, 'fork': fork_mode}
        samples = n['fit'] if ranks == 1 else n['ddp_fit']

        def throughput_with(side: str, ranks: int = ranks, modes: dict[str, str] = modes) -> list[float]:
            result = run_worker(paths[side], 'fit', str(n['fit_batches']), modes[side], ranks=ranks)
            return [result['batches_per_second']]

        values = alternate(samples, throughput_with)
        results.append(summarize(label, 'batches/s', values, 'ratio >= 0.99', 0.99, higher_is_better=True))

    print('work lost on preemption ...', flush=True)
    save_every = 50
    rng = random.Random(7)
    signal_batches = [rng.randint(10, 190) for _ in range(n['preempt'])]
    losses: dict[str, list[dict]] = {side: [] for side in SIDES}
    for signal_at in signal_batches:
        for side in rng.sample(SIDES, 2):
            losses[side].append(preemption_loss(paths[side], side, signal_at, save_every))
    lost = {side: [float(x['lost_batches']) for x in losses[side]] for side in SIDES}
    results.append(
        side_by_side(
            f'work lost on preemption (batches recomputed; SIGTERM at a random batch; upstream saves every '
            f'{save_every})',
            'batches',
            lost,
            'fork: 0',
            max(lost['fork']) == 0,
        ),
    )
    after_batches = [float(x['checkpoint_after_batches']) for x in losses['fork']]
    results.append(
        absolute('SIGTERM to checkpoint on disk (batches)', 'batches', after_batches, '<= 1 (the batch in flight)', 1),
    )
    results.append(
        absolute(
            'SIGTERM to checkpoint on disk (seconds)',
            's',
            [x['checkpoint_after_seconds'] for x in losses['fork']],
            'report',
            1e9,
        ),
    )

    print('SIGTERM to exit ...', flush=True)
    sigterm = alternate(n['sigterm'], lambda side: [sigterm_to_exit(paths[side])])
    results.append(summarize('SIGTERM to exit (mid-fit, closing callback)', 's', sigterm, 'median ratio <= 1.05', 1.05))

    print('fork build ...', flush=True)
    results.append(absolute('fork build (pip wheel, artifact cached)', 's', build_time(n['build']), '<= 10 s', 10.0))
    return {'machine': machine(), 'quick': quick, 'results': results}


def write_markdown(report: dict, path: Path) -> None:
    m = report['machine']
    lines = [
        f'Measured {m["date"]} on {m["cores"]} cores, {m["processor"]}, Python {m["python"]}, torch {m["torch"]} '
        f'({"quick mode" if report["quick"] else "full run"}).',
        '',
        '| metric | upstream median (min-max) | fork median (min-max) | ratio fork/upstream [95% CI] | target | met |',
        '| --- | --- | --- | --- | --- | --- |',
    ]
    for r in report['results']:
        fork = f'{_fmt(r["fork"]["median"])} ({_fmt(r["fork"]["min"])}-{_fmt(r["fork"]["max"])}) {r["unit"]}'
        if 'upstream' in r:
            up = r['upstream']
            upstream = f'{_fmt(up["median"])} ({_fmt(up["min"])}-{_fmt(up["max"])}) {r["unit"]}'
            ratio = f'{r["ratio"]:.3f} [{r["ratio_ci95"][0]:.3f}, {r["ratio_ci95"][1]:.3f}]' if 'ratio' in r else 'n/a'
        else:
            upstream, ratio = 'n/a (fork only)', 'n/a'
        met = 'report' if r['target'] == 'report' else (
            'yes' if r['met'] else ('within noise' if not r['missed_beyond_noise'] else 'NO')
        )
        lines.append(f'| {r["metric"]} | {upstream} | {fork} | {ratio} | {r["target"]} | {met} |')
    lines.append('')
    lines.append(
        '"within noise": the median misses the target but the 95% bootstrap interval of the ratio includes it.',
    )
    path.write_text('\n'.join(lines) + '\n')


def _fmt(value: float) -> str:
    return f'{value:.4g}'


def write_chart(report: dict, path: Path) -> Optional[Path]:
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('matplotlib is not installed: no chart', file=sys.stderr)
        return None
    rows = [r for r in report['results'] if 'ratio' in r]
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(rows) + 1.5))
    for i, r in enumerate(rows):
        low, high = r['ratio_ci95']
        ax.errorbar(
            r['ratio'],
            i,
            xerr=[[r['ratio'] - low], [high - r['ratio']]],
            fmt='o',
            capsize=4,
            color='tab:blue' if r['met'] or not r['missed_beyond_noise'] else 'tab:red',
        )
        limit = float(r['target'].split()[-1])
        ax.plot([limit], [i], marker='|', markersize=18, color='tab:gray')
    ax.axvline(1.0, color='black', linewidth=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r['metric'] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel('fork / upstream (median ratio, 95% bootstrap CI; grey tick = target)')
    ax.set_title(f'Fork vs upstream 0.32.1 - {report["machine"]["date"]}')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--quick', action='store_true', help='few samples: a smoke test of the harness')
    parser.add_argument('--check', action='store_true', help='exit 1 if a target is missed beyond the noise')
    args = parser.parse_args()
    out = TARGETS / 'quick' if args.quick else ROOT / 'bench' / 'results'
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report = run(args.quick)
    report['wall_seconds'] = time.perf_counter() - started
    (out / 'latest.json').write_text(json.dumps(report, indent=2) + '\n')
    write_markdown(report, out / 'latest.md')
    write_chart(report, out / 'latest.png')
    print((out / 'latest.md').read_text())
    print(f'Results in {out} ({report["wall_seconds"]:.0f} s)')
    missed = [r['metric'] for r in report['results'] if r['missed_beyond_noise']]
    if args.check and missed:
        print(f'Targets missed beyond noise: {", ".join(missed)}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
