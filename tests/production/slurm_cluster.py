# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""A real one-node SLURM on this machine, for the tests: Debian's ``slurm-wlm`` and ``munge``, in a temporary folder.

:func:`slurm_cluster` (a module-scoped fixture) installs the packages with ``apt-get`` where they are missing (as root;
CI runs as root on a fresh machine), writes a munge key and a ``slurm.conf`` into a temporary folder, starts its own
``munged``, ``slurmctld -D`` and ``slurmd -D`` on free ports and waits until the node is idle; at teardown it cancels
the jobs and stops the daemons, also when the tests fail. Every client command gets ``SLURM_CONF`` (see
:attr:`SlurmCluster.env`), so nothing outside the folder is read or changed, except the packages. It skips, with the
reason, where that cannot work: not root, ``apt-get`` failing, a daemon that does not come up.

The configuration is the smallest that runs jobs here: ``proctrack/linuxproc`` and ``task/none`` (no cgroups),
``select/cons_tres`` with ``CR_CPU``, ``sched/builtin``, a partition whose CPUs up to four jobs share (the tests run
several jobs at once: their start-up, importing torch, takes most of the time), no accounting (no ``sacct``: a job's exit code is read with
``scontrol show job`` while ``MinJobAge`` keeps the job), ``KillWait=30``, the node as ``slurmd -C`` describes it.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest

#: The Debian packages (bookworm: SLURM 22.05, munge 0.5.15) and the programs that must be there afterwards.
PACKAGES = ('slurm-wlm', 'munge')
PROGRAMS = ('munged', 'mungekey', 'slurmctld', 'slurmd', 'sbatch', 'srun', 'scancel', 'scontrol', 'sinfo', 'squeue')

#: Seconds between a job's SIGTERM and its SIGKILL (``scancel``, the time limit).
KILL_WAIT = 30

#: Seconds a finished job stays in ``scontrol show job`` (its state and exit code).
MIN_JOB_AGE = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _missing_programs() -> list[str]:
    return [program for program in PROGRAMS if shutil.which(program) is None]


def _install() -> Optional[str]:
    """Install :data:`PACKAGES` where a program is missing; the reason to skip, or ``None``."""
    if not _missing_programs():
        return None
    if os.geteuid() != 0:
        return f'SLURM is not installed ({", ".join(_missing_programs())} missing) and installing it needs root'
    if shutil.which('apt-get') is None:
        return 'SLURM is not installed and there is no apt-get to install it'
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    for command in (
        ['apt-get', 'update'],
        ['apt-get', 'install', '-y', '--no-install-recommends', *PACKAGES],
    ):
        try:
            proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            return f'{" ".join(command)} timed out'
        if proc.returncode != 0:
            return f'{" ".join(command)} failed ({proc.returncode}): {proc.stderr[-2000:]}'
    missing = _missing_programs()
    return f'installed {", ".join(PACKAGES)} but {", ".join(missing)} still missing' if missing else None


def _node_line() -> str:
    """This machine as a ``NodeName`` line of ``slurm.conf``, from ``slurmd -C`` (its name, real CPUs and memory)."""
    out = subprocess.run(['slurmd', '-C'], capture_output=True, text=True, timeout=60, check=True).stdout
    return next(line for line in out.splitlines() if line.startswith('NodeName='))


class SlurmCluster:
    """A running one-node SLURM (see :func:`slurm_cluster`).

    Args:
        root: the folder that holds its configuration, state, spool and logs (and the munge key and socket).
    """

    def __init__(self, root: Path):
        self.root = root
        self.node_line = _node_line()
        self.node = self.node_line.split()[0].split('=', 1)[1]  # the name slurmd finds for itself
        self.conf = root / 'slurm.conf'
        self.env = dict(os.environ, SLURM_CONF=str(self.conf), PYTHONUNBUFFERED='1')
        self.env.pop('COMPOSER_SIGNAL_HANDLING', None)
        for name in list(self.env):  # a test run inside a SLURM job must not leak that job into ours
            if name.startswith(('SLURM_', 'SBATCH_', 'SRUN_', 'SALLOC_')) and name != 'SLURM_CONF':
                del self.env[name]
        self._daemons: list[tuple[str, subprocess.Popen]] = []
        self.jobs: list[int] = []

    # --- set-up ---

    def start(self) -> Optional[str]:
        """Write the configuration and start the daemons; the reason they could not start, or ``None``."""
        munge_dir, run_dir = self.root / 'munge', self.root / 'run'
        for directory in ('state', 'spool', 'log'):
            (self.root / directory).mkdir(mode=0o755)
        munge_dir.mkdir(mode=0o700)
        run_dir.mkdir(mode=0o755)  # munged wants its socket's folder (and the parents) searchable by all
        self.munge_socket = run_dir / 'munge.socket'
        key = munge_dir / 'munge.key'
        subprocess.run(['mungekey', '--create', f'--keyfile={key}'], check=True, timeout=60, capture_output=True)
        self._start(
            'munged',
            [
                'munged',
                '--foreground',
                f'--key-file={key}',
                f'--socket={self.munge_socket}',
                f'--pid-file={run_dir / "munged.pid"}',
                f'--log-file={self.root / "log" / "munged.log"}',
                f'--seed-file={munge_dir / "munged.seed"}',
            ],
        )
        if not self._wait(lambda: self.munge_socket.exists(), 30):
            return f'munged did not start:\n{self.logs()}'

        self.conf.write_text(self._slurm_conf())
        self._start('slurmctld', ['slurmctld', '-D', '-i', '-f', str(self.conf)])
        self._start('slurmd', ['slurmd', '-D', '-N', self.node, '-f', str(self.conf)])
        if not self._wait(self._node_is_idle, 90):
            return f'the SLURM node did not become idle within 90 s:\n{self.logs()}'
        return None

    def _slurm_conf(self) -> str:
        root = self.root
        return textwrap.dedent(
            f"""\
            ClusterName=composer-tests
            SlurmctldHost={self.node}(127.0.0.1)
            SlurmctldPort={_free_port()}
            SlurmdPort={_free_port()}
            SlurmUser=root
            SlurmdUser=root
            AuthType=auth/munge
            CredType=cred/munge
            AuthInfo=socket={self.munge_socket}
            StateSaveLocation={root / 'state'}
            SlurmdSpoolDir={root / 'spool'}
            SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}
            SlurmdPidFile={root / 'run' / 'slurmd.pid'}
            SlurmctldLogFile={root / 'log' / 'slurmctld.log'}
            SlurmdLogFile={root / 'log' / 'slurmd.log'}
            SlurmctldDebug=info
            SlurmdDebug=info
            ProctrackType=proctrack/linuxproc
            TaskPlugin=task/none
            SelectType=select/cons_tres
            SelectTypeParameters=CR_CPU
            SchedulerType=sched/builtin
            MpiDefault=none
            JobAcctGatherType=jobacct_gather/none
            AccountingStorageType=accounting_storage/none
            JobCompType=jobcomp/none
            KillWait={KILL_WAIT}
            MinJobAge={MIN_JOB_AGE}
            ReturnToService=2
            {self.node_line} NodeAddr=127.0.0.1 State=UNKNOWN
            PartitionName=tests Nodes={self.node} Default=YES MaxTime=INFINITE OverSubscribe=FORCE:4 State=UP
            """,
        )

    def _start(self, name: str, command: list[str]) -> None:
        log = open(self.root / 'log' / f'{name}.out', 'w')
        proc = subprocess.Popen(
            command,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._daemons.append((name, proc))

    def _wait(self, condition, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(proc.poll() is not None for _, proc in self._daemons):
                return False
            if condition():
                return True
            time.sleep(0.2)
        return False

    def _node_is_idle(self) -> bool:
        proc = self.run(['sinfo', '-h', '-N', '-n', self.node, '-o', '%T'], check=False, timeout=30)
        return proc.returncode == 0 and proc.stdout.strip() == 'idle'

    # --- clients ---

    def run(self, command: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster (with its ``SLURM_CONF``)."""
        proc = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f'{command} failed ({proc.returncode}): {proc.stdout}{proc.stderr}\n{self.logs()}')
        return proc

    def sbatch(self, script: Path, *options: str) -> int:
        """Submit ``script`` (with ``options`` before it); the job id.

        The job gets the environment of the tests (as ``sbatch`` passes it on by default) with ``SLURM_CONF``.
        """
        out = self.run(['sbatch', '--parsable', *options, str(script)]).stdout
        job = int(out.strip().split(';')[0])
        self.jobs.append(job)
        return job

    def job(self, job: int) -> dict[str, str]:
        """``scontrol show job``'s fields of ``job`` (``JobState``, ``ExitCode``, ``Reason``, ...)."""
        out = self.run(['scontrol', '-o', 'show', 'job', str(job)]).stdout
        return dict(re.findall(r'(\S+?)=(\S*)', out))

    def wait_for_job(self, job: int, timeout: float) -> dict[str, str]:
        """Wait until ``job`` has ended (not pending, running, completing, ...); its fields; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job)
            if info.get('JobState') in (
                'COMPLETED',
                'FAILED',
                'CANCELLED',
                'TIMEOUT',
                'NODE_FAIL',
                'PREEMPTED',
                'OUT_OF_MEMORY',
                'BOOT_FAIL',
                'DEADLINE',
            ):
                return info
            if time.monotonic() > deadline:
                pytest.fail(f'job {job} did not end within {timeout} s: {info}\n{self.logs()}')
            time.sleep(0.5)

    def logs(self) -> str:
        """The daemons' logs (their last lines), for failure messages."""
        parts = []
        logs = self.root / 'log'
        # slurmctld -D and slurmd -D print their log on stderr as well: their .out only if the log is not there.
        for path in sorted(p for p in logs.glob('*') if p.suffix == '.log' or not p.with_suffix('.log').exists()):
            lines = path.read_text(errors='replace').splitlines()[-40:]
            parts.append(f'--- {path.name} ---\n' + '\n'.join(lines))
        return '\n'.join(parts)

    # --- tear-down ---

    def stop(self) -> None:
        """Cancel the jobs, wait (bounded) until they are gone, then stop the daemons."""
        if self.jobs and all(proc.poll() is None for _, proc in self._daemons):
            self.run(['scancel', '--signal=KILL', '--full', *map(str, self.jobs)], check=False)
            self.run(['scancel', *map(str, self.jobs)], check=False)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                out = self.run(['squeue', '-h', '-o', '%i'], check=False).stdout
                if not out.strip():
                    break
                time.sleep(0.5)
        for _, proc in reversed(self._daemons):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in reversed(self._daemons):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


@pytest.fixture(scope='module')
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A one-node SLURM on this machine (see the module's docstring); skips if it cannot run here."""
    reason = _install()
    if reason:
        pytest.skip(reason)
    # Not pytest's tmp_path: munged wants every folder above its socket searchable by all (pytest's are 0700).
    root = Path(tempfile.mkdtemp(prefix='composer-slurm-'))
    root.chmod(0o755)
    cluster = SlurmCluster(root)
    try:
        reason = cluster.start()
        if reason:
            pytest.skip(reason)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
