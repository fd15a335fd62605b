# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""LLM Foundry end to end: its own CLI trains a tiny MPT on CPU, offline, with the fork and with upstream 0.32.1.

Usage (from the repository root; ``make client [QUICK=1]`` runs it)::

    python -m clients.llmfoundry [--quick] [--write-docs] [--reinstall-fork] [--venv <dir>] [--work build/client]

Steps: the client venv (:mod:`clients.llmfoundry.venv`), upstream's unmodified package in ``<work>/upstream-target``
(``python -m forktool target upstream``, switched in with ``PYTHONPATH``), the inputs
(:mod:`clients.llmfoundry.prepare`: a local BPE tokenizer, synthetic MDS data), then the scenarios. Each training is
``python -m llmfoundry.cli.cli train <yaml>`` in a subprocess with a timeout, its YAML written to
``<work>/runs/<scenario>-<package>/config.yaml`` and its output beside it. The callbacks the YAML names come from
:mod:`clients.llmfoundry.foundry_callbacks` through the YAML's ``code_paths``.

1. ``uninterrupted``: a full run; its final weights are the reference (upstream's must be bit-identical to them).
2. ``preempted``: ``COMPOSER_SAVE_ON_PREEMPTION=1`` in the environment, the YAML unchanged; SIGTERM at batch
   ``signal_at``: exit 143 and exactly one checkpoint, of the batch at which training stopped; the same YAML run again
   (``autoresume: true``) resumes from it and ends with weights bit-identical to scenario 1's.
3. ``close-timeout``: LLM Foundry's ``run_timeout`` callback sends SIGINT after fit while a callback's ``close()``
   hangs; with ``COMPOSER_SIGNAL_CLOSE_TIMEOUT`` set small the process ends within timeout + close timeout + slack,
   with exit 130 and a stderr line naming what was still closing. Upstream's exit code and time are recorded.
4. ``sigterm-default``: the variable unset, SIGTERM mid-training exits 143, on the fork as on upstream.

``--quick`` trains 6 batches instead of 16 and runs upstream only where a scenario is about it (3 and 4), not as the
comparison in 1 and 2. It prints one line per scenario and ``N passed, N failed`` and exits 1 if a scenario failed. ``--write-docs``
rewrites the section "LLM Foundry end to end" of ``docs/clients.md`` from the results.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from clients.llmfoundry import venv as client_venv

REPO = client_venv.REPO
DEFAULT_WORK = REPO / 'build' / 'client'
DOCS = REPO / 'docs' / 'clients.md'
CALLBACKS_FILE = Path(__file__).resolve().parent / 'foundry_callbacks.py'
SECTION = '## LLM Foundry end to end'
LAST_SECTION = '## The clients\' own test suites, fork vs upstream'
LAST_SECTION_PLACEHOLDER = '(filled in by make client-tests)'
INTRO = (
    'What the fork\'s clients see when the fork replaces upstream 0.32.1 as their `mosaicml`. Each section is written '
    'by\nthe run it describes.\n'
)

#: Seconds: one training process, a helper process in the client venv, the driver's wait for the signal marker.
TRAIN_TIMEOUT = 600
HELPER_TIMEOUT = 300
RUN_TIMEOUT = 3  # LLM Foundry's run_timeout callback: SIGINT this long after fit_end
CLOSE_TIMEOUT = 5  # COMPOSER_SIGNAL_CLOSE_TIMEOUT in scenario 3
CLOSE_SLACK = 10  # scenario 3's allowance on top of RUN_TIMEOUT + CLOSE_TIMEOUT, from fit_end to the process's end
HANG_SECONDS = 30  # the hanging close() returns after this: longer than the fork's bound, and nothing hangs for ever
NOT_RUN = 'not run (--quick)'
IGNORED_IN_DEL = 'Exception ignored in: <function Engine.__del__'
CHECKPOINT = re.compile(r'ep(\d+)-ba(\d+)-rank0\.pt')
#: Variables of the caller's environment that would change the runs (platform loggers, the fork's switches).
DROPPED_ENV_PREFIXES = ('COMPOSER_', 'MOSAICML_', 'WANDB_', 'MLFLOW_', 'DATABRICKS_', 'HF_', 'TRANSFORMERS_')
DROPPED_ENV = (
    'RUN_NAME',
    'WORLD_SIZE',
    'RANK',
    'LOCAL_RANK',
    'LOCAL_WORLD_SIZE',
    'NODE_RANK',
    'MASTER_ADDR',
    'MASTER_PORT',
    'PYTHONPATH',
    'PYTHONSTARTUP',
)


class ClientError(Exception):
    """A step before the scenarios failed; the message says what to do."""


@dataclass
class Sizes:
    batches: int  # max_duration, in batches
    signal_at: int  # the batch at whose end SIGTERM is sent
    batch_size: int = 4
    seq_len: int = 64
    upstream_everywhere: bool = True  # False: upstream only where a scenario asks for it (3 and 4)

    @property
    def samples(self) -> int:
        return 2 * self.batches * self.batch_size  # twice what a run reads: no epoch ends


FULL = Sizes(batches=16, signal_at=6)
QUICK = Sizes(batches=6, signal_at=3, upstream_everywhere=False)


@dataclass
class Training:
    """One ``llmfoundry.cli.cli train`` process and what it left."""
    returncode: Optional[int]
    seconds: float
    timed_out: bool
    log: Path
    batches: list[int] = field(default_factory=list)  # the batches this process finished
    fit_end: Optional[float] = None
    closes: int = 0  # how often the hanging close() began
    ended: float = 0.0
    stderr: str = ''

    @property
    def exit(self) -> str:
        return 'timeout' if self.timed_out else str(self.returncode)


@dataclass
class Outcome:
    """One scenario on one package."""
    trainings: list[Training]
    checkpoints: list[int] = field(default_factory=list)  # batches of the checkpoint files after the first training
    final: Optional[Path] = None
    identical: Optional[bool] = None
    notes: list[str] = field(default_factory=list)

    def cell(self) -> str:
        parts = [f'exit {" then ".join(t.exit for t in self.trainings)}']
        parts.append(' + '.join(f'{t.seconds:.1f} s' for t in self.trainings))
        parts.append('checkpoint ' + (', '.join(f'ba{b}' for b in self.checkpoints) if self.checkpoints else 'none'))
        if self.identical is not None:
            parts.append('identical' if self.identical else 'NOT identical')
        return ' · '.join(parts + self.notes)


@dataclass
class Scenario:
    name: str
    title: str
    fork: Optional[Outcome] = None
    upstream: Optional[Outcome] = None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


class Client:
    """The client venv, the work folder and the runs."""

    def __init__(self, python: Path, work: Path, upstream_target: Path, sizes: Sizes):
        self.python = python
        self.work = work
        self.upstream_target = upstream_target
        self.sizes = sizes
        self.inputs = work / 'inputs'

    def packages(self) -> tuple[str, ...]:
        """Where upstream is only a comparison (scenarios 1 and 2), ``--quick`` runs the fork alone."""
        return ('fork', 'upstream') if self.sizes.upstream_everywhere else ('fork',)

    # -- helpers in the client venv ------------------------------------------------------------------------------------

    def helper(self, module: str, *args: str) -> dict[str, Any]:
        """Run ``python -m clients.llmfoundry.<module> <args>`` in the client venv; return its JSON line."""
        cmd = [str(self.python), '-m', f'clients.llmfoundry.{module}', *args]
        try:
            result = subprocess.run(
                cmd,
                cwd=REPO,
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=HELPER_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ClientError(f'{" ".join(cmd)} took longer than {HELPER_TIMEOUT} s and was stopped.') from None
        if result.returncode != 0:
            raise ClientError(f'{" ".join(cmd)} failed with exit code {result.returncode}:\n{result.stderr[-3000:]}')
        return json.loads(result.stdout.strip().splitlines()[-1])

    def versions(self) -> dict[str, str]:
        code = (
            'import importlib.metadata as m, json; print(json.dumps({n: m.version(n) for n in '
            "('mosaicml', 'llm-foundry', 'torch', 'mosaicml-streaming', 'transformers')}))"
        )
        out = subprocess.run([str(self.python), '-c', code],
                             capture_output=True,
                             text=True,
                             timeout=HELPER_TIMEOUT,
                             check=True,
                             cwd='/')
        return json.loads(out.stdout.strip().splitlines()[-1])

    def env(self, package: str = 'fork', extra: Optional[dict[str, str]] = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_ENV_PREFIXES) and k not in DROPPED_ENV}
        env.update({
            'HF_HUB_OFFLINE': '1',
            'TRANSFORMERS_OFFLINE': '1',
            'HF_DATASETS_OFFLINE': '1',
            'HF_HOME': str(self.work / 'hf-home'),
            'TOKENIZERS_PARALLELISM': 'false',
            'WANDB_MODE': 'disabled',
            'OMP_NUM_THREADS': '1',
            'PYTHONUNBUFFERED': '1',
            'PYTHONDONTWRITEBYTECODE': '1',
        })
        if package == 'upstream':
            env['PYTHONPATH'] = str(self.upstream_target)
        env.update(extra or {})
        return env

    # -- the YAML ------------------------------------------------------------------------------------------------------

    def config(self, folder: Path, callbacks: dict[str, Any]) -> dict[str, Any]:
        """LLM Foundry 0.22.0's train YAML for a tiny MPT on CPU (its TrainConfig rejects unknown top-level keys)."""
        s = self.sizes
        return {
            'run_name': folder.name,
            'seed': 17,
            'max_seq_len': s.seq_len,
            'code_paths': [str(CALLBACKS_FILE)],
            'model': {
                'name': 'mpt_causal_lm',
                'init_device': 'cpu',
                'd_model': 64,
                'n_heads': 2,
                'n_layers': 2,
                'expansion_ratio': 2,
                'max_seq_len': s.seq_len,
                'vocab_size': 512,  # prepare.VOCAB_SIZE
                'attn_config': {
                    'attn_impl': 'torch',
                },
                'loss_fn': 'torch_crossentropy',
            },
            'tokenizer': {
                'name': str(self.inputs / 'tokenizer'),
                'kwargs': {
                    'model_max_length': s.seq_len,
                },
            },
            'train_loader': {
                'name': 'text',
                'dataset': {
                    'local': str(self.inputs / 'data'),
                    'remote': None,
                    'split': 'train',
                    'shuffle': True,
                    'shuffle_seed': 17,
                    'max_seq_len': s.seq_len,
                },
                'drop_last': True,
                'num_workers': 0,
                'pin_memory': False,
                'prefetch_factor': None,
                'persistent_workers': False,
            },
            'scheduler': {
                'name': 'cosine_with_warmup',
                't_warmup': '2ba',
                'alpha_f': 0.1,
            },
            'optimizer': {
                'name': 'decoupled_adamw',
                'lr': 1.0e-3,
                'betas': [0.9, 0.95],
                'eps': 1.0e-8,
                'weight_decay': 0.0,
            },
            'max_duration': f'{s.batches}ba',
            'eval_interval': 1,
            'global_train_batch_size': s.batch_size,
            'device_train_microbatch_size': s.batch_size,
            'device_eval_batch_size': s.batch_size,
            'precision': 'fp32',
            'dist_timeout': 60,
            'save_folder': str(folder / 'checkpoints'),
            'save_interval': '1000ba',  # no periodic checkpoint: only the final one, or the preemption's
            'autoresume': True,
            'progress_bar': False,
            'log_to_console': True,
            'console_log_interval': '1ba',
            'python_log_level': 'info',
            'log_config': False,
            'callbacks': callbacks,
        }

    # -- one training --------------------------------------------------------------------------------------------------

    def train(
        self,
        folder: Path,
        package: str,
        env: Optional[dict[str, str]] = None,
        signal_at_marker: Optional[signal.Signals] = None,
    ) -> Training:
        """Run LLM Foundry's CLI on ``folder/config.yaml``; send ``signal_at_marker`` when the marker file appears."""
        attempt = len(list(folder.glob('train-*.log'))) + 1
        log = folder / f'train-{attempt}.log'
        marker = folder / 'marker'
        cmd = [str(self.python), '-m', 'llmfoundry.cli.cli', 'train', str(folder / 'config.yaml')]
        start = time.monotonic()
        timed_out = False
        with open(log, 'wb') as out, open(folder / f'train-{attempt}.stderr', 'wb') as err:
            proc = subprocess.Popen(
                cmd,
                cwd=folder,
                env=self.env(package, env),
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            try:
                if signal_at_marker is not None:
                    while not marker.exists() and proc.poll() is None:
                        if time.monotonic() - start > TRAIN_TIMEOUT:
                            raise subprocess.TimeoutExpired(cmd, TRAIN_TIMEOUT)
                        time.sleep(0.02)
                    if proc.poll() is None:
                        proc.send_signal(signal_at_marker)
                        (folder / 'marker.sent').write_text(f'{signal_at_marker.name}\n')
                proc.wait(timeout=max(1.0, TRAIN_TIMEOUT - (time.monotonic() - start)))
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
            except BaseException:  # the driver interrupted: leave no training behind (it has a session of its own)
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=60)
                raise
        ended = time.time()
        training = Training(proc.returncode, time.monotonic() - start, timed_out, log, ended=ended)
        training.stderr = (folder / f'train-{attempt}.stderr').read_text(errors='replace')
        for line in _read_lines(folder / 'progress.txt'):
            pid, what, value = line.split()
            if int(pid) != proc.pid:
                continue
            if what == 'batch':
                training.batches.append(int(value))
            elif what == 'fit_end':
                training.fit_end = float(value)
            elif what == 'close_start':
                training.closes += 1
        return training

    def new_run(self, name: str, callbacks: dict[str, Any]) -> Path:
        folder = self.work / 'runs' / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        cbs = {'client_progress': {'progress': str(folder / 'progress.txt'), **callbacks.pop('client_progress', {})}}
        cbs.update(callbacks)
        (folder / 'config.yaml').write_text(yaml.safe_dump(self.config(folder, cbs), sort_keys=False))
        return folder

    def signal_callbacks(self, folder_name: str) -> dict[str, Any]:
        folder = self.work / 'runs' / folder_name
        return {'client_progress': {'signal_at': self.sizes.signal_at, 'marker': str(folder / 'marker')}}

    def compare(self, a: Path, b: Path) -> dict[str, Any]:
        return self.helper('checkpoints', str(a), str(b))


def _read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def checkpoint_batches(folder: Path) -> list[int]:
    """The batches of the checkpoint files (``ep<e>-ba<b>-rank0.pt``; not the ``latest`` symlink) in ``folder``."""
    found = []
    for path in (folder / 'checkpoints').glob('*.pt'):
        match = CHECKPOINT.fullmatch(path.name)
        if match and not path.is_symlink():
            found.append(int(match.group(2)))
    return sorted(found)


def final_checkpoint(folder: Path, batches: int) -> Optional[Path]:
    paths = [p for p in (folder / 'checkpoints').glob(f'ep*-ba{batches}-rank0.pt') if not p.is_symlink()]
    return paths[0] if len(paths) == 1 else None


def _fmt_failure(training: Training, what: str) -> str:
    tail = '\n'.join(training.stderr.strip().splitlines()[-5:])
    return f'{what} (log: {training.log}; stderr ends with: {tail!r})'


# -- the scenarios -----------------------------------------------------------------------------------------------------


def uninterrupted(client: Client) -> Scenario:
    scenario = Scenario('uninterrupted', 'uninterrupted run (the reference)')
    for package in client.packages():
        folder = client.new_run(f'uninterrupted-{package}', {})
        training = client.train(folder, package)
        outcome = Outcome([training], checkpoint_batches(folder), final_checkpoint(folder, client.sizes.batches))
        setattr(scenario, package, outcome)
        if training.returncode != 0 or outcome.final is None:
            scenario.failures.append(_fmt_failure(training, f'{package}: exit {training.exit}, no final checkpoint'))
    if scenario.fork.final and scenario.upstream and scenario.upstream.final:
        result = client.compare(scenario.fork.final, scenario.upstream.final)
        scenario.upstream.identical = result['identical']
        if not result['identical']:
            scenario.failures.append(f'upstream\'s final weights differ from the fork\'s: {result["differing"][:5]}')
    return scenario


def preempted(client: Client, reference: Optional[Path]) -> Scenario:
    scenario = Scenario('preempted', 'SIGTERM mid-training, COMPOSER_SAVE_ON_PREEMPTION=1; rerun resumes')
    n = client.sizes.signal_at
    for package in client.packages():
        name = f'preempted-{package}'
        folder = client.new_run(name, client.signal_callbacks(name))
        env = {'COMPOSER_SAVE_ON_PREEMPTION': '1'}
        first = client.train(folder, package, env, signal_at_marker=signal.SIGTERM)
        outcome = Outcome([first], checkpoint_batches(folder))
        rerun = client.train(folder, package, env)
        outcome.trainings.append(rerun)
        outcome.final = final_checkpoint(folder, client.sizes.batches)
        resumed_from = rerun.batches[0] - 1 if rerun.batches else None
        outcome.notes.append(f'rerun resumed after ba{resumed_from}' if resumed_from else 'rerun started over')
        if reference and outcome.final:
            outcome.identical = client.compare(reference, outcome.final)['identical']
        setattr(scenario, package, outcome)
    fork = scenario.fork
    first, rerun = fork.trainings
    stopped = first.batches[-1] if first.batches else None
    if first.returncode != 143:
        scenario.failures.append(_fmt_failure(first, f'fork: the SIGTERMed run exited {first.exit}, not 143'))
    if stopped != n or fork.checkpoints != [n]:
        scenario.failures.append(
            f'fork: signalled at the end of ba{n}, training stopped after ba{stopped}, checkpoints '
            f'{fork.checkpoints or "none"} (expected exactly one, ba{n})',
        )
    if rerun.returncode != 0 or not rerun.batches or rerun.batches[0] != n + 1:
        scenario.failures.append(
            _fmt_failure(
                rerun,
                f'fork: the rerun exited {rerun.exit} and trained batches {rerun.batches} '
                f'(expected {n + 1}..{client.sizes.batches}, resumed from ba{n})',
            ),
        )
    if fork.identical is not True:
        scenario.failures.append(f'fork: final weights identical to scenario 1\'s: {fork.identical}')
    return scenario


def close_timeout(client: Client) -> Scenario:
    scenario = Scenario(
        'close-timeout',
        f'run_timeout ({RUN_TIMEOUT} s) SIGINT while a close() hangs, COMPOSER_SIGNAL_CLOSE_TIMEOUT={CLOSE_TIMEOUT}',
    )
    bound = RUN_TIMEOUT + CLOSE_TIMEOUT + CLOSE_SLACK
    for package in ('fork', 'upstream'):
        name = f'close-timeout-{package}'
        folder = client.work / 'runs' / name
        callbacks = {
            'run_timeout': {
                'timeout': RUN_TIMEOUT,
            },
            'client_hang_close': {
                'progress': str(folder / 'progress.txt'),
                'seconds': HANG_SECONDS,
            },
        }
        folder = client.new_run(name, callbacks)
        training = client.train(folder, package, {'COMPOSER_SIGNAL_CLOSE_TIMEOUT': str(CLOSE_TIMEOUT)})
        outcome = Outcome([training], checkpoint_batches(folder))
        after_fit = training.ended - training.fit_end if training.fit_end else None
        outcome.notes.append(f'{after_fit:.1f} s after fit_end' if after_fit is not None else 'no fit_end')
        named = [line for line in training.stderr.splitlines() if 'HangingCloseCallback.close' in line]
        outcome.notes.append('stderr names HangingCloseCallback.close' if named else 'no stderr line names the close')
        outcome.notes.append(f'close() began {training.closes}x')
        if IGNORED_IN_DEL in training.stderr:
            outcome.notes.append('SystemExit ignored in Engine.__del__')
        setattr(scenario, package, outcome)
        if package == 'fork':
            if training.returncode != 130:
                scenario.failures.append(_fmt_failure(training, f'fork: exit {training.exit}, not 130'))
            if after_fit is None or after_fit > bound:
                scenario.failures.append(f'fork: ended {after_fit} s after fit_end, more than {bound} s')
            if not named:
                scenario.failures.append(
                    _fmt_failure(training, 'fork: no stderr line names HangingCloseCallback.close'),
                )
    return scenario


def sigterm_default(client: Client) -> Scenario:
    scenario = Scenario('sigterm-default', 'SIGTERM mid-training, variables unset')
    for package in ('fork', 'upstream'):
        name = f'sigterm-default-{package}'
        folder = client.new_run(name, client.signal_callbacks(name))
        training = client.train(folder, package, signal_at_marker=signal.SIGTERM)
        setattr(scenario, package, Outcome([training], checkpoint_batches(folder)))
        if training.returncode != 143:
            scenario.failures.append(_fmt_failure(training, f'{package}: exit {training.exit}, not 143'))
    if scenario.fork.checkpoints != scenario.upstream.checkpoints:
        scenario.failures.append(
            f'checkpoints differ: fork {scenario.fork.checkpoints}, upstream {scenario.upstream.checkpoints}',
        )
    return scenario


# -- set-up, report ----------------------------------------------------------------------------------------------------


def upstream_target(python: Path, dest: Path) -> Path:
    """Upstream's unmodified package in ``dest`` (``forktool target upstream``, with the client venv's pip)."""
    version_file = dest / 'composer' / '_version.py'
    if version_file.exists() and '+' not in version_file.read_text():
        return dest
    cmd = [str(python), '-m', 'forktool', 'target', 'upstream', '--dest', str(dest)]
    try:
        subprocess.run(cmd, cwd=REPO, timeout=HELPER_TIMEOUT, check=True, stdout=sys.stderr)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        raise ClientError(f'Could not put upstream\'s package in {dest} ({e}); it needs PyPI or your index.') from None
    return dest


def _paragraph(*parts: str) -> str:
    return textwrap.fill(''.join(parts), width=120, break_long_words=False, break_on_hyphens=False)


def markdown(scenarios: list[Scenario], facts: dict[str, Any]) -> str:
    """The section "LLM Foundry end to end" of docs/clients.md, from this run's results."""
    passed = sum(s.passed for s in scenarios)
    rows = [
        f'| {i}. {s.title} | {s.fork.cell() if s.fork else "-"} | {s.upstream.cell() if s.upstream else NOT_RUN} | '
        f'{"passed" if s.passed else "FAILED: " + "; ".join(f.splitlines()[0] for f in s.failures)} |'
        for i, s in enumerate(scenarios, 1)
    ]
    v = facts['versions']
    lines = [
        SECTION,
        '',
        _paragraph(
            'LLM Foundry\'s own CLI, `python -m llmfoundry.cli.cli train <yaml>`, trains a tiny MPT (2 layers, ',
            'd_model 64) on CPU, offline (`HF_HUB_OFFLINE=1`, no loggers), with a BPE tokenizer trained locally and ',
            'synthetic data written with streaming\'s `MDSWriter`, once with the fork and once with upstream\'s ',
            'unmodified 0.32.1 package switched in with `PYTHONPATH`, in the same venv. Run it with ',
            '`make client [QUICK=1] [DOCS=1]` (`python -m clients.llmfoundry [--quick] [--write-docs]`); the inputs, ',
            'YAMLs, logs and checkpoints are in `build/client/`. This section is written by `--write-docs` from the ',
            'run below.',
        ),
        '',
        _paragraph(
            f'Run of {facts["date"]} on {facts["cpus"]} CPUs: fork `{v["mosaicml"]}` at commit `{facts["commit"]}`, ',
            f'llm-foundry `{v["llm-foundry"]}`, torch `{v["torch"]}`, mosaicml-streaming ',
            f'`{v["mosaicml-streaming"]}`, transformers `{v["transformers"]}`; {facts["batches"]} batches of ',
            f'{facts["batch_size"]} samples, SIGTERM at the end of batch {facts["signal_at"]}',
            ' (`--quick`)' if facts['quick'] else '',
            f'. Wall time: client venv step {facts["venv_seconds"]:.0f} s ({facts["venv_state"]}), scenarios ',
            f'{facts["scenario_seconds"]:.0f} s. **{passed} passed, {len(scenarios) - passed} failed.**',
        ),
        '',
        _paragraph(
            'Cells: exit code(s), wall time of each process, the checkpoint files that the (first) process left, ',
            'whether the final weights are bit-identical (`torch.equal` on every tensor of `state[\'model\']`) to ',
            'the fork\'s in scenario 1.',
        ),
        '',
        '| scenario | fork | upstream 0.32.1 | fork check |',
        '| --- | --- | --- | --- |',
        *rows,
        '',
    ]
    close = next((s for s in scenarios if s.name == 'close-timeout'), None)
    if close and close.upstream and IGNORED_IN_DEL in close.upstream.trainings[0].stderr:
        lines += [
            _paragraph(
                'Upstream in scenario 3: LLM Foundry\'s `train()` drops the `Trainer`, so `Engine.__del__` runs the ',
                'close; the SIGINT handler\'s `sys.exit(130)` raises inside it, where Python ignores the exception ',
                '(`Exception ignored in: <function Engine.__del__ ...>` on stderr); the exit hook then runs the close ',
                f'again, which hangs to its end ({HANG_SECONDS} s here), and the process exits ',
                f'{close.upstream.trainings[0].exit}.',
            ),
            '',
        ]
    lines += [
        '### Preemption saving for LLM Foundry jobs',
        '',
        _paragraph(
            'Leave the YAML as it is (`save_folder` set, as for any checkpointing; `autoresume: true` with a ',
            '`run_name` to resume) and set the variable in the job\'s environment, e.g. in a Kubernetes container ',
            'spec:',
        ),
        '',
        '```yaml',
        'env:',
        '  - name: COMPOSER_SAVE_ON_PREEMPTION',
        '    value: "1"',
        '```',
        '',
        _paragraph(
            'or `COMPOSER_SAVE_ON_PREEMPTION=1 python -m llmfoundry.cli.cli train job.yaml`. A SIGTERM during `fit()` ',
            'then stops every rank after the batch in flight, saves that batch\'s checkpoint to `save_folder` and ',
            'exits 143; the same YAML run again resumes from it. A `Trainer` without `save_folder` logs one warning ',
            'and runs without it. `COMPOSER_SIGNAL_CLOSE_TIMEOUT=<seconds>` (default 30) bounds how long a close may ',
            'go on after a first SIGTERM/SIGINT, such as the SIGINT of LLM Foundry\'s `run_timeout` callback.',
        ),
        '',
    ]
    return '\n'.join(lines)


def write_docs(section: str, path: Path = DOCS) -> None:
    """Replace the section "LLM Foundry end to end" of ``path``, keeping the others (create the file if needed)."""
    if path.exists():
        text = path.read_text(encoding='utf-8')
    else:
        text = f'# Clients of the fork\n\n{INTRO}\n{SECTION}\n\n{LAST_SECTION}\n\n{LAST_SECTION_PLACEHOLDER}\n'
    if SECTION not in text:
        text = text.replace(LAST_SECTION, f'{SECTION}\n\n{LAST_SECTION}') if LAST_SECTION in text else \
            f'{text.rstrip()}\n\n{SECTION}\n'
    start = text.index(SECTION)
    following = re.search(r'^## ', text[start + len(SECTION):], flags=re.MULTILINE)
    end = start + len(SECTION) + following.start() if following else len(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text[:start] + section + ('\n' if following else '') + text[end:], encoding='utf-8')


def _exit_on_signal(signum: int, frame: Any) -> None:
    del frame
    sys.exit(128 + signum)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m clients.llmfoundry', description=__doc__.splitlines()[0])
    parser.add_argument(
        '--quick',
        action='store_true',
        help=f'{QUICK.batches} batches instead of {FULL.batches}; upstream only in scenarios 3 and 4',
    )
    parser.add_argument('--write-docs', action='store_true', help=f'write the results into {DOCS.relative_to(REPO)}')
    parser.add_argument('--venv', type=Path, default=client_venv.DEFAULT_DEST, help='default: %(default)s')
    parser.add_argument('--work', type=Path, default=DEFAULT_WORK, help='default: %(default)s')
    parser.add_argument(
        '--reinstall-fork',
        action='store_true',
        help='rebuild the fork into the client venv even if its version is unchanged',
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    # A SIGTERM (or SIGHUP) ends the driver through SystemExit, so that it kills the training in flight.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    work = args.work.resolve()
    started = time.monotonic()
    try:
        done: list[str] = []
        python = client_venv.ensure_venv(args.venv, reinstall_fork=args.reinstall_fork, done=done)
        venv_state = ', '.join(done)
        venv_seconds = time.monotonic() - started
        client = Client(python, work, upstream_target(python, work / 'upstream-target'), sizes)
        versions = client.versions()
        client.helper('prepare', '--dest', str(client.inputs), '--samples', str(sizes.samples))
    except (client_venv.VenvError, ClientError, subprocess.SubprocessError) as e:
        print(f'client: error: {e}', file=sys.stderr)
        return 2
    scenario_start = time.monotonic()
    scenarios = []
    reference = None
    for run_scenario in (uninterrupted, preempted, close_timeout, sigterm_default):
        try:
            scenario = run_scenario(client, reference) if run_scenario is preempted else run_scenario(client)
        except (ClientError, subprocess.SubprocessError, OSError, ValueError) as e:
            scenario = Scenario(run_scenario.__name__.replace('_', '-'), run_scenario.__name__, failures=[str(e)])
        if run_scenario is uninterrupted and scenario.fork:
            reference = scenario.fork.final
        scenarios.append(scenario)
        status = 'passed' if scenario.passed else 'FAILED'
        print(
            f'{status}: {scenario.name}: fork: {scenario.fork.cell() if scenario.fork else "-"}; upstream: '
            f'{scenario.upstream.cell() if scenario.upstream else NOT_RUN}',
            flush=True,
        )
        for failure in scenario.failures:
            print(f'    {failure}', flush=True)
    facts = {
        'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        'commit': client_venv.built_from(args.venv.resolve()) or client_venv.source_commit(),
        'versions': versions,
        'batches': sizes.batches,
        'batch_size': sizes.batch_size,
        'signal_at': sizes.signal_at,
        'quick': args.quick,
        'venv_seconds': venv_seconds,
        'venv_state': venv_state,
        'cpus': os.cpu_count(),
        'scenario_seconds': time.monotonic() - scenario_start,
    }
    if args.write_docs:
        write_docs(markdown(scenarios, facts))
        print(f'client: results written to {DOCS}')
    passed = sum(s.passed for s in scenarios)
    print(f'client: {time.monotonic() - started:.0f} s in all (venv {venv_seconds:.0f} s)')
    print(f'{passed} passed, {len(scenarios) - passed} failed')
    return 0 if passed == len(scenarios) else 1
