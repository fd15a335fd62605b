"""Signal storm: trainings signalled at the worst moments, each checked for what the fork promises.

Every run trains a small model on CPU (``stress/worker.py``: DataLoader with 2 workers, a checkpoint every 3 batches,
evaluation every 5, ``autoresume``) in one process or as 2 ranks under the ``composer`` launcher, in the default mode
or with ``save_on_preemption=True``. The worker announces a moment (before ``fit()``, inside a batch, during
evaluation, with a checkpoint half-written on disk, inside ``close()``) and holds still there; the harness then
sends SIGTERM, SIGINT, two signals in a row, or SIGKILL, to the process (or the launcher) or to the whole process
group, after a random delay. Then it checks:

- the run ends within the deadline (no hang);
- its exit status is the documented one for that signal, mode, launch and moment (``EXPECTED`` below);
- every callback's ``close()`` and ``post_close()`` ran at most once per rank;
- no process of the run survives (DataLoader workers, ranks, the launcher), found by an environment tag;
- the checkpoint ``autoresume`` picks (``latest-rank0.pt``) exists once a checkpoint was complete, and loads;
  with ``save_on_preemption`` and SIGTERM during ``fit()`` it holds exactly the batch the signal interrupted;
- a new run with ``autoresume`` starts from that checkpoint and ends with the same weights, bit for bit, as a
  run that was never interrupted.

Sharded runs (``fsdp2``: FSDP2 on 2 ranks under the launcher, ``FSDP_VERSION=2``, sharded checkpoints, each a folder
of one ``__{rank}_0.distcp`` per rank and ``.metadata``) get SIGKILL or SIGTERM inside a batch or during a sharded
save: every rank's shard file half-written (``shard_write``), the shards complete but ``.metadata`` not yet in place
(``shard_metadata``), or the folder complete but ``latest-rank0.pt`` not yet pointing to it (``shard_link``). Besides
the checks above: every ``latest-rank*.pt`` points to a complete folder (``.metadata`` and every rank's shard) that
loads, never to a partial one; and after the resume, which saves the batches of any partial folder again, every
folder is complete and loads, holding the batch its name says. Their run numbers start at 10000.

Seeded and reproducible: run ``i`` of seed ``s`` always gets the same launch, mode, signal, moment, target and delays
(``--seed s --run i`` replays it, keeping its folder under ``build/stress/``). A summary table and
``build/stress/summary.json`` report the outcome counts; any violation makes the exit status 1.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import psutil

HERE = Path(__file__).resolve().parent
WORKER = HERE / 'worker.py'
OUT = HERE.parent / 'build' / 'stress'

LAUNCHES = ('1proc', '2ranks')
MODES = ('default', 'preempt')
SIGNALS = ('SIGTERM', 'SIGINT', 'double', 'SIGKILL')
MOMENTS = ('before_fit', 'batch', 'eval', 'checkpoint', 'close')
DOUBLES = (('SIGTERM', 'SIGTERM'), ('SIGINT', 'SIGINT'), ('SIGTERM', 'SIGINT'))

#: The sharded runs' cells (launch ``fsdp2``); run ``SHARDED_BASE + k`` covers cell ``k % 16`` of their seeded shuffle.
SHARDED_LAUNCH = 'fsdp2'
SHARDED_SIGNALS = ('SIGKILL', 'SIGTERM')
SHARDED_MOMENTS = ('batch', 'shard_write', 'shard_metadata', 'shard_link')
SHARDED_BASE = 10_000
#: The moments that only rank 0 holds (it alone writes the monolithic checkpoint, the ``.metadata``, the symlink).
RANK_0_MOMENTS = ('checkpoint', 'shard_metadata', 'shard_link')
SHARD_FILES = ('.metadata', '__0_0.distcp', '__1_0.distcp')

PAUSE = 1.0  # seconds the worker holds still at the moment; the signal comes within its first half
DEADLINE = 90.0  # seconds from the first signal to the exit of the run (the launcher's clean-up timeout is 30 s)
RESUME_DEADLINE = 180.0
SURVIVOR_GRACE = 10.0  # seconds for the processes of a run to disappear after it ended

#: Batches per epoch (64 samples, batch size 4, per rank) and the worker's checkpoint and evaluation intervals.
BATCHES = {'1proc': 16, '2ranks': 8, SHARDED_LAUNCH: 8}
EPOCHS, SAVE_INTERVAL, EVAL_INTERVAL = 2, 3, 5

#: The documented exit status of the run (the process, or the ``composer`` launcher), per launch and first signal.
#: One process: SIGTERM -> SystemExit(143) (graceful, or after the preemption checkpoint); SIGINT ->
#: KeyboardInterrupt, which ends the interpreter with status 1 once Composer is imported (upstream 0.32.1 too: code run
#: at interpreter exit clears CPython's "exit by SIGINT" flag; a bare interpreter reports -2). Under the launcher, the
#: launcher's status is the first failed rank's: 143 when the ranks got SIGTERM (from us or from the launcher's clean-up
#: after it caught the signal itself); a rank that ends with KeyboardInterrupt exits with 1 under the launcher, and one
#: that the launcher's clean-up SIGTERM reaches after Composer restored its handlers dies by it: ``sys.exit(-15)``, 241.
#: A second signal while stopping or closing force-quits with 128 + its number; a second signal after Composer restored
#: the handlers (the process was already exiting) has the signal's default effect.
EXPECTED = {
    ('1proc', 'SIGTERM'): {143},
    ('1proc', 'SIGINT'): {1},
    ('2ranks', 'SIGTERM'): {143},
    ('2ranks', 'SIGINT'): {1, 143, 241},
    ('1proc', 'SIGKILL'): {-9},
    ('2ranks', 'SIGKILL'): {-9},
    (SHARDED_LAUNCH, 'SIGTERM'): {143},
    (SHARDED_LAUNCH, 'SIGKILL'): {-9},
}


@dataclass
class Plan:
    """What one run does; a pure function of (seed, index)."""

    seed: int
    index: int
    launch: str
    mode: str
    signals: list[str]
    moment: str
    at: int  # batch count of the moment
    target: str  # 'process' (the training process or the launcher) or 'group'
    delay: float
    gap: float

    @property
    def signal_kind(self) -> str:
        return 'double' if len(self.signals) == 2 else self.signals[0]

    def replay(self) -> str:
        return f'make stress SEED={self.seed} RUN={self.index}'


@dataclass
class Result:
    plan: Plan
    returncode: Optional[int] = None
    exit_seconds: Optional[float] = None
    checkpoint_batch: Optional[int] = None
    interrupted_batch: Optional[int] = None
    resumed_from: Optional[int] = None
    lost_batches: Optional[int] = None
    partial_folders: Optional[list[str]] = None  # sharded: the checkpoint folders that the signal left incomplete
    seconds: Optional[float] = None  # the whole run: training, signal, checks and resume
    violations: list[str] = field(default_factory=list)


def cells() -> list[tuple[str, str, str, str]]:
    return list(itertools.product(LAUNCHES, MODES, SIGNALS, MOMENTS))


def sharded_cells() -> list[tuple[str, str, str, str]]:
    return list(itertools.product((SHARDED_LAUNCH,), MODES, SHARDED_SIGNALS, SHARDED_MOMENTS))


def _cell_order(seed: int, sharded: bool) -> list[tuple[str, str, str, str]]:
    if not sharded:
        order = cells()
        random.Random(seed).shuffle(order)
    else:
        order = sharded_cells()
        random.Random(f'{seed}-sharded').shuffle(order)
    return order


def make_plan(seed: int, index: int) -> Plan:
    """Run ``index`` covers cell ``index % 80`` of a seeded shuffle of all cells; its details come from its own RNG.

    A sharded run (``index >= SHARDED_BASE``) covers cell ``(index - SHARDED_BASE) % 16`` of the sharded cells.
    """
    sharded = index >= SHARDED_BASE
    order = _cell_order(seed, sharded)
    launch, mode, kind, moment = order[(index - SHARDED_BASE if sharded else index) % len(order)]
    rng = random.Random(f'{seed}-{index}')
    per_epoch = BATCHES[launch]
    total = per_epoch * EPOCHS
    if moment == 'batch':
        at = rng.randrange(0, total - 1)  # the batch in flight has count `at`; not the last one
    elif moment == 'eval':
        at = rng.choice(range(EVAL_INTERVAL, total - 1, EVAL_INTERVAL))
    elif moment == 'checkpoint' or moment.startswith('shard_'):
        at = rng.choice(range(SAVE_INTERVAL, total - 1, SAVE_INTERVAL))
    else:
        at = -1
    signals = list(rng.choice(DOUBLES)) if kind == 'double' else [kind]
    # SIGKILL after a grace period reaches every process; other signals come from a terminal or scheduler (the
    # whole group) or from a supervisor that signals the main process only (Kubernetes signals PID 1).
    target = 'group' if kind == 'SIGKILL' else rng.choice(['process', 'group'])
    return Plan(
        seed=seed,
        index=index,
        launch=launch,
        mode=mode,
        signals=signals,
        moment=moment,
        at=at,
        target=target,
        delay=round(rng.uniform(0.0, PAUSE / 2), 3),
        gap=round(rng.uniform(0.35, 0.7), 3),  # beyond the 0.25 s in which a repeat counts as the same delivery
    )


def quick_runs(seed: int) -> list[int]:
    """``--quick``'s runs: few of the 80 cells, but every kind (a seeded choice: over seeds every cell comes up).

    Greedily, in the seeded order, the runs that cover what is not covered yet: every moment and every signal kind
    under each launch, each mode under each launch and with each signal kind, and per launch one run whose
    ``save_on_preemption`` checkpoint must hold exactly the interrupted batch. Ten or eleven runs.
    """
    order = _cell_order(seed, sharded=False)

    def kinds(index: int) -> set[tuple]:
        launch, mode, kind, moment = order[index]
        covered = {('moment', launch, moment), ('signal', launch, kind), ('mode', launch, mode), ('mode', mode, kind)}
        if expected_stop_batch(make_plan(seed, index)) is not None:
            covered.add(('stop', launch))
        return covered

    needed = set().union(*(kinds(index) for index in range(len(order))))
    chosen: list[int] = []
    while needed:
        best = max(range(len(order)), key=lambda index: (len(kinds(index) & needed), -index))
        chosen.append(best)
        needed -= kinds(best)
    return sorted(chosen)


def quick_sharded_runs(seed: int) -> list[int]:
    """``--quick``'s sharded runs: a SIGKILL during a sharded save, and a ``save_on_preemption`` SIGTERM."""
    order = _cell_order(seed, sharded=True)
    kill = next(k for k, c in enumerate(order) if c[2] == 'SIGKILL' and c[3].startswith('shard_'))
    stop = next(k for k, c in enumerate(order) if c[1] == 'preempt' and c[2] == 'SIGTERM')
    return sorted({SHARDED_BASE + kill, SHARDED_BASE + stop})


def expected_codes(plan: Plan) -> set[int]:
    first = plan.signals[0]
    codes = set(EXPECTED[(plan.launch, first)])
    if len(plan.signals) == 2:
        second = getattr(signal, plan.signals[1])
        # Force quit (128 + signum), or the second signal's own effect where it came after Composer restored the
        # handlers (the process, or the launcher after its clean-up, was already exiting); under the launcher a
        # rank's KeyboardInterrupt (1).
        codes |= {128 + second, -second} | ({1} if plan.launch == '2ranks' else set())
    return codes


def expected_stop_batch(plan: Plan) -> Optional[int]:
    """With ``save_on_preemption`` and one SIGTERM during fit: the batch count of the stop (and its checkpoint).

    The batch in flight always finishes. One process: a signal during the batch, its evaluation or its checkpoint
    stops after that batch. Several ranks: the stop is agreed in the all-reduce after each batch, so a signal after
    that all-reduce (evaluation, checkpoint) stops after the next batch.
    """
    during_fit = ('batch', 'eval', 'checkpoint', *SHARDED_MOMENTS)
    if plan.mode != 'preempt' or plan.signals != ['SIGTERM'] or plan.moment not in during_fit:
        return None
    if plan.moment == 'batch':
        return plan.at + 1
    return plan.at + (1 if plan.launch != '1proc' else 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _command(plan_launch: str, run_dir: Path, worker_args: list[str]) -> list[str]:
    worker = [str(WORKER), *worker_args, *(['--sharded'] if plan_launch == SHARDED_LAUNCH else [])]
    if plan_launch == '1proc':
        return [sys.executable, *worker]
    launcher = os.path.join(os.path.dirname(sys.executable), 'composer')
    return [
        launcher, '-n', '2', '--master_addr', '127.0.0.1', '--master_port', str(_free_port()),
        '--stdout', str(run_dir / 'rank{rank}.stdout'), '--stderr', str(run_dir / 'rank{rank}.stderr'),
        *worker,
    ]  # yapf: disable


def _sigint_at_its_default() -> None:
    """As from a terminal: a shell starts background jobs with SIGINT ignored, which a child keeps across exec."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(launch: str, run_dir: Path, worker_args: list[str], tag: str, log_name: str) -> subprocess.Popen:
    env = dict(os.environ, STORM_TAG=tag, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    if launch == SHARDED_LAUNCH:
        env['FSDP_VERSION'] = '2'  # FSDP1 needs CUDA; FSDP2 runs on CPU ranks
    with open(run_dir / f'{log_name}.log', 'wb') as log:
        return subprocess.Popen(
            _command(launch, run_dir, worker_args),
            cwd=run_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: `group` signals reach only this run
            preexec_fn=_sigint_at_its_default,
        )


def _events(run_dir: Path) -> list[dict]:
    path = run_dir / 'events.jsonl'
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _tagged(tag: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get('STORM_TAG') == tag:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _kill_all(proc: subprocess.Popen, tag: str) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for survivor in _tagged(tag):
        try:
            survivor.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()


def _survivors(tag: str) -> list[str]:
    deadline = time.monotonic() + SURVIVOR_GRACE
    while True:
        alive = [p for p in _tagged(tag) if p.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return [f'{p.pid} {" ".join(p.cmdline())[:120]}' for p in alive]
        time.sleep(0.1)


def _send(proc: subprocess.Popen, target: str, name: str) -> None:
    signum = getattr(signal, name)
    try:
        if target == 'group':
            os.killpg(proc.pid, signum)
        else:
            os.kill(proc.pid, signum)
    except ProcessLookupError:
        pass


def _checkpoint_batch(path: Path) -> int:
    """The batch a checkpoint holds: a file, or a sharded folder (read back into one file, as one process can)."""
    import tempfile

    import torch
    if path.is_dir():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
        with tempfile.TemporaryDirectory() as scratch:
            dcp_to_torch_save(path, os.path.join(scratch, 'checkpoint.pt'))
            state = torch.load(os.path.join(scratch, 'checkpoint.pt'), map_location='cpu', weights_only=False)
    else:
        state = torch.load(path, map_location='cpu', weights_only=False)
    return int(state['state']['timestamp']['Timestamp']['batch'])


def _sharded_folders(folder: Path) -> tuple[list[str], list[str]]:
    """The complete (``.metadata`` and every rank's shard) and the partial checkpoint folders in ``folder``."""
    complete, partial = [], []
    for path in sorted(folder.glob('ep*-ba*')) if folder.is_dir() else []:
        if path.is_dir() and not path.is_symlink():
            (complete if all((path / name).exists() for name in SHARD_FILES) else partial).append(path.name)
    return complete, partial


def _same_weights(a: Path, b: Path) -> list[str]:
    import torch
    first, second = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    if first.keys() != second.keys():
        return ['parameter names differ']
    return [name for name in first if not torch.equal(first[name], second[name])]


def _weights(launch: str, run_dir: Path, role: str) -> list[Path]:
    """The final weights a run saves: rank 0's, or every rank's shards of them when sharded."""
    if launch == SHARDED_LAUNCH:
        return [run_dir / f'weights-{role}.rank{rank}.pt' for rank in range(2)]
    return [run_dir / f'weights-{role}.pt']


def reference_weights(launch: str, out: Path) -> list[Path]:
    """An uninterrupted run per launch, once per output folder."""
    run_dir = out / f'reference-{launch}'
    weights = _weights(launch, run_dir, 'reference')
    if all(path.exists() for path in weights):
        return weights
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    tag = uuid.uuid4().hex
    proc = _start(launch, run_dir, ['--role', 'reference'], tag, 'reference')
    try:
        proc.wait(timeout=RESUME_DEADLINE)
    except subprocess.TimeoutExpired:
        _kill_all(proc, tag)
    if proc.returncode != 0 or not all(path.exists() for path in weights):
        raise SystemExit(f'the uninterrupted reference run failed ({proc.returncode}); see {run_dir}/reference.log')
    return weights


def run_one(plan: Plan, out: Path) -> Result:
    started = time.monotonic()
    result = _run_one(plan, out)
    result.seconds = round(time.monotonic() - started, 1)
    return result


def _check_latest_sharded(folder: Path, result: Result) -> None:
    """Every ``latest-rank*.pt`` points to a complete sharded folder that loads; one exists once a folder is linked.

    The symlink is what makes a folder the checkpoint: a kill at ``shard_link`` leaves the held folder complete but not
    yet linked (``latest`` still the previous folder, or absent before the first one), as it should.
    """
    complete, partial = _sharded_folders(folder)
    result.partial_folders = partial
    links = sorted(folder.glob('latest-rank*.pt')) if folder.is_dir() else []
    plan = result.plan
    unlinked = {name for name in complete if plan.moment == 'shard_link' and name.endswith(f'-ba{plan.at}')}
    if set(complete) - unlinked and not (folder / 'latest-rank0.pt').exists():
        result.violations.append(f'complete checkpoint folders {complete} but no latest-rank0.pt')
    for link in links:
        target = os.readlink(link) if link.is_symlink() else '(not a symlink)'
        if os.path.basename(os.path.normpath(target)) not in complete:
            result.violations.append(f'{link.name} -> {target}: not a complete folder (partial: {partial})')
            continue
        try:
            batch = _checkpoint_batch(link)
        except Exception as e:  # noqa: BLE001 - any failure to load is the violation
            result.violations.append(f'{link.name} -> {target} does not load: {e!r}')
            continue
        if link.name == 'latest-rank0.pt':
            result.checkpoint_batch = batch


def _check_sharded_after_resume(folder: Path, result: Result) -> None:
    """After the resume every folder is complete, loads and holds its batch (a partial one was saved again)."""
    complete, partial = _sharded_folders(folder)
    if partial:
        result.violations.append(
            f'resume: partial checkpoint folders left {partial} (before: {result.partial_folders})',
        )
    for name in complete:
        try:
            batch = _checkpoint_batch(folder / name)
        except Exception as e:  # noqa: BLE001 - any failure to load is the violation
            result.violations.append(f'resume: {name} does not load: {e!r}')
            continue
        if f'-ba{batch}' != name[name.index('-ba'):]:
            result.violations.append(f'resume: {name} holds batch {batch}')


def _resume_batches(plan: Plan, complete: list[str], result: Result) -> set[int]:
    """Where the resume may start: from ``latest``'s batch (0 without one).

    Sharded, killed before the first folder was linked: also from that complete folder, where autoresume falls back
    to the newest complete checkpoint when ``latest`` is missing (fork 0.32.1+signals.6).
    """
    batches = {result.checkpoint_batch or 0}
    if plan.launch == SHARDED_LAUNCH and result.checkpoint_batch is None and complete:
        batches.add(max(int(name[name.index('-ba') + 3:]) for name in complete))
    return batches


def _run_one(plan: Plan, out: Path) -> Result:
    result = Result(plan)
    run_dir = out / f'run-{plan.seed}-{plan.index:04d}'
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / 'plan.json').write_text(json.dumps(asdict(plan), indent=1))
    tag = uuid.uuid4().hex
    args = ['--role', 'train', '--mode', plan.mode, '--moment', plan.moment, '--at', str(plan.at)]
    args += ['--pause', str(PAUSE)]
    proc = _start(plan.launch, run_dir, args, tag, 'train')
    violations = result.violations

    # Wait until every rank that holds the moment is there, then signal.
    holding = 1 if plan.moment in RANK_0_MOMENTS or plan.launch == '1proc' else 2
    moment = None
    wait_until = time.monotonic() + RESUME_DEADLINE
    while moment is None and proc.poll() is None and time.monotonic() < wait_until:
        moments = [e for e in _events(run_dir) if e['event'] == 'moment']
        if len({e['rank'] for e in moments}) >= holding:
            moment = moments[0]
        else:
            time.sleep(0.005)
    if moment is None:
        _kill_all(proc, tag)
        violations.append(f'the run never reached its moment (exit {proc.returncode}); see {run_dir}/train.log')
        return result
    time.sleep(plan.delay)
    signalled = time.monotonic()
    _send(proc, plan.target, plan.signals[0])
    if len(plan.signals) == 2:
        time.sleep(plan.gap)
        _send(proc, plan.target, plan.signals[1])
    try:
        proc.wait(timeout=DEADLINE)
        result.exit_seconds = round(time.monotonic() - signalled, 3)
    except subprocess.TimeoutExpired:
        violations.append(f'hang: still running {DEADLINE:.0f} s after the signal')
        _kill_all(proc, tag)
    result.returncode = proc.returncode
    survivors = _survivors(tag)
    if survivors:
        violations.append(f'processes survived the run: {survivors}')
        _kill_all(proc, tag)

    events = _events(run_dir)
    if proc.returncode not in expected_codes(plan) and not any(v.startswith('hang') for v in violations):
        violations.append(f'exit status {proc.returncode}, expected one of {sorted(expected_codes(plan))}')
    for rank in sorted({e['rank'] for e in events}):
        for name in ('close', 'post_close'):
            count = sum(1 for e in events if e['event'] == name and e['rank'] == rank)
            if count > 1:
                violations.append(f'rank {rank}: callback {name}() ran {count} times')
    if plan.moment in ('batch', 'eval', 'checkpoint', *SHARDED_MOMENTS):
        result.interrupted_batch = moment['batch'] + (1 if plan.moment == 'batch' else 0)

    # The checkpoint autoresume picks.
    folder = run_dir / 'checkpoints'
    complete = sorted(folder.glob('ep*-ba*-rank0.pt')) if folder.is_dir() else []
    latest = folder / 'latest-rank0.pt'
    if plan.launch == SHARDED_LAUNCH:
        _check_latest_sharded(folder, result)
    elif complete and not latest.exists():
        violations.append(f'complete checkpoints {[p.name for p in complete]} but no latest-rank0.pt')
    if latest.exists() and plan.launch != SHARDED_LAUNCH:
        try:
            result.checkpoint_batch = _checkpoint_batch(latest)
        except Exception as e:  # noqa: BLE001 - any failure to load is the violation
            violations.append(f'latest-rank0.pt -> {os.readlink(latest)} does not load: {e!r}')
    stop = expected_stop_batch(plan)
    if stop is not None and result.checkpoint_batch != stop:
        violations.append(f'save_on_preemption: the checkpoint holds batch {result.checkpoint_batch}, expected {stop}')
    if result.interrupted_batch is not None:
        # Batches done when the signal came that the checkpoint autoresume picks does not hold (0 when a stop saved
        # a later batch: with several ranks a signal after the batch's all-reduce stops after the next batch).
        result.lost_batches = max(0, result.interrupted_batch - (result.checkpoint_batch or 0))

    # Resume and compare with the uninterrupted run.
    folder_before_resume = _sharded_folders(folder)[0] if plan.launch == SHARDED_LAUNCH else []
    resume_tag = uuid.uuid4().hex
    resume = _start(plan.launch, run_dir, ['--role', 'resume'], resume_tag, 'resume')
    try:
        resume.wait(timeout=RESUME_DEADLINE)
    except subprocess.TimeoutExpired:
        violations.append('resume: hang')
        _kill_all(resume, resume_tag)
    resume_events = _events(run_dir)[len(events):]
    starts = [e['batch'] for e in resume_events if e['event'] == 'fit_start' and e['rank'] == 0]
    result.resumed_from = starts[0] if starts else None
    if resume.returncode != 0:
        violations.append(f'resume: exit status {resume.returncode}; see {run_dir}/resume.log')
    elif result.resumed_from not in _resume_batches(plan, folder_before_resume, result):
        violations.append(f'resume started at batch {result.resumed_from}, latest holds {result.checkpoint_batch}')
    else:
        pairs = zip(_weights(plan.launch, run_dir, 'resume'), reference_weights(plan.launch, out))
        for resumed, reference in pairs:
            different = _same_weights(resumed, reference)
            if different:
                violations.append(f'resumed weights ({resumed.name}) differ from the uninterrupted run: {different}')
    if plan.launch == SHARDED_LAUNCH and resume.returncode == 0:
        _check_sharded_after_resume(folder, result)
    survivors = _survivors(resume_tag)
    if survivors:
        violations.append(f'processes survived the resume: {survivors}')
        _kill_all(resume, resume_tag)
    return result


def summarize(results: list[Result]) -> str:
    rows = collections.defaultdict(list)
    for r in results:
        rows[(r.plan.launch, r.plan.mode, r.plan.signal_kind, r.plan.moment)].append(r)
    header = (
        'launch | mode | signal | moment | runs | ok | violations | exit statuses | lost batches | '
        'slowest exit (s)'
    )
    lines = [
        f'| {header} |',
        '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ]
    for key in sorted(rows):
        group = rows[key]
        codes = collections.Counter(r.returncode for r in group)
        lost = [r.lost_batches for r in group if r.lost_batches is not None]
        slowest = max((r.exit_seconds for r in group if r.exit_seconds is not None), default=None)
        bad = sum(1 for r in group if r.violations)
        lines.append(
            f'| {" | ".join(key)} | {len(group)} | {len(group) - bad} | {bad} | '
            f'{", ".join(f"{c}: {n}" for c, n in sorted(codes.items(), key=str))} | '
            f'{", ".join(map(str, sorted(lost))) if lost else "-"} | {slowest if slowest is not None else "-"} |',
        )
    return '\n'.join(lines)


def race_rounds(seed: int, rounds: int, out: Path) -> list[dict]:
    """Repeat the race stress test (32 threads fitting and closing trainers, SIGTERM storm, request_stop())."""
    test = (
        'tests/signal_handling/test_preemption_threads.py::'
        'test_race_stress_32_threads_while_the_main_thread_is_signalled_and_stops_are_requested'
    )
    results = []
    for round_ in range(rounds):
        race_seed = seed * 1000 + round_
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, '-m', 'pytest', '-q', '-s', '-p', 'no:cacheprovider', test],
            cwd=HERE.parent,
            env=dict(os.environ, SIGNAL_RACE_SEED=str(race_seed)),
            capture_output=True,
            text=True,
            timeout=900,
        )
        line = next((l for l in proc.stdout.splitlines() if l.startswith('race stress')), '')
        results.append({
            'seed': race_seed,
            'passed': proc.returncode == 0,
            'seconds': round(time.monotonic() - started, 1),
            'detail': line,
        })
        print(f'[race {round_}] seed {race_seed}: {"ok" if proc.returncode == 0 else "VIOLATION"} {line}', flush=True)
        if proc.returncode != 0:
            (out / f'race-{race_seed}.log').write_text(proc.stdout + proc.stderr)
            print(f'       see {out}/race-{race_seed}.log; replay: SIGNAL_RACE_SEED={race_seed} pytest {test}')
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs', type=int, default=200, help='number of runs (default 200: every cell 2-3 times)')
    parser.add_argument(
        '--quick',
        action='store_true',
        help='CI: 10-11 runs that cover every kind (quick_runs), 2 sharded runs and one race round',
    )
    parser.add_argument(
        '--sharded-runs',
        type=int,
        default=16,
        help='FSDP2 sharded runs after the others (default 16: every sharded cell once)',
    )
    parser.add_argument('--seed', type=int, default=None, help='default: random, printed')
    parser.add_argument('--run', type=int, default=None, help='replay this one run of --seed')
    parser.add_argument('--out', type=Path, default=OUT)
    parser.add_argument('--jobs', type=int, default=1, help='runs in parallel (each run is a process or 3)')
    parser.add_argument('--race-rounds', type=int, default=None, help='race stress repeats (default 5, quick 1)')
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    if args.run is not None:
        runs = [args.run]
    elif args.quick:
        runs = quick_runs(seed) + quick_sharded_runs(seed)
    else:
        runs = list(range(args.runs)) + [SHARDED_BASE + k for k in range(args.sharded_runs)]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    print(f'signal storm: seed {seed}, {len(runs)} run(s); replay one: `make stress SEED={seed} RUN=<i>`', flush=True)
    started = time.monotonic()
    for launch in sorted({make_plan(seed, index).launch for index in runs}):  # before the runs start in parallel
        reference_weights(launch, out)

    def run_and_report(index: int) -> Result:
        plan = make_plan(seed, index)
        result = run_one(plan, out)
        lines = [
            f'[{index:4d}] {plan.launch:6s} {plan.mode:7s} {"+".join(plan.signals):15s} -> {plan.target:7s} '
            f'at {plan.moment:10s} {plan.at:3d}: exit {result.returncode} in {result.exit_seconds} s, '
            f'checkpoint {result.checkpoint_batch}, resumed {result.resumed_from}: '
            f'{"VIOLATION" if result.violations else "ok"}',
        ]
        lines += [f'       {violation}  (replay: {plan.replay()})' for violation in result.violations]
        print('\n'.join(lines), flush=True)
        if not result.violations and args.run is None:
            shutil.rmtree(out / f'run-{plan.seed}-{plan.index:04d}', ignore_errors=True)
        return result

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(run_and_report, runs))
    rounds = args.race_rounds if args.race_rounds is not None else (
        0 if args.run is not None else 1 if args.quick else 5
    )
    races = race_rounds(seed, rounds, out)
    table = summarize(results)
    violations = sum(len(r.violations) for r in results) + sum(1 for r in races if not r['passed'])
    print(f'\n{table}\n')
    elapsed = time.monotonic() - started
    counts = f'{len(results)} runs, {len(races)} race rounds, {violations} violations'
    print(f'seed {seed}: {counts}, {elapsed / 60:.1f} min')
    summary = {
        'seed': seed,
        'runs': len(results),
        'violations': violations,
        'minutes': round(elapsed / 60, 1),
        'slowest_exit_seconds': max((r.exit_seconds for r in results if r.exit_seconds is not None), default=None),
        'lost_batches_preempt_sigterm': [r.lost_batches for r in results if expected_stop_batch(r.plan) is not None],
        'race_rounds': races,
        'table': table,
        'results': [asdict(r) for r in results],
    }
    (out / 'summary.json').write_text(json.dumps(summary, indent=1))
    return 1 if violations else 0


if __name__ == '__main__':
    sys.exit(main())
