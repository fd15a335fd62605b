# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""``python -m clients.suites``: run clients' test suites on the fork and on upstream 0.32.1, compare the outcomes.

Examples (from the repository root)::

    python -m clients.suites --composer build/composer          # Composer v0.32.1's own tests, in .venv
    python -m clients.suites --llmfoundry build/llm-foundry     # LLM Foundry release/v0.22.0's tests, client venv
    python -m clients.suites --doc docs/client-tests.md         # the doc, from the JSONs of the last runs

Writes build/client-tests/<suite>.json (every test's outcome on both sides) and <suite>.md (the table). Exit status:
0 when every outcome is the same on both sides or its difference is explained in clients/suites/differences.toml;
1 when an unexplained difference exists; 2 when something could not run (the message says what to do); 3 when the
deadline (--until) left paths unrun.
"""

from __future__ import annotations

import argparse
import datetime
import signal
import sys
from pathlib import Path
from typing import Optional

from clients.suites import composer_suite, doc, llmfoundry_suite, report
from clients.suites.outcomes import SuiteError
from clients.suites.run import DEFAULT_OUT, log, run_suite


def _deadline(text: Optional[str]) -> Optional[datetime.datetime]:
    if not text:
        return None
    try:
        hour, minute = (int(x) for x in text.split(':'))
    except ValueError as e:
        raise SuiteError(f'--until {text!r}: give the UTC time as HH:MM') from e
    if not (0 <= hour < 24 and 0 <= minute < 60):
        raise SuiteError(f'--until {text!r}: give the UTC time as HH:MM, 00:00 to 23:59')
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.replace(hour=hour, minute=minute, second=0, microsecond=0)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m clients.suites',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('--composer', type=Path, help='a git checkout of mosaicml/composer at v0.32.1')
    parser.add_argument('--composer-paths', nargs='+', help=f'instead of {" ".join(composer_suite.PATHS)}')
    parser.add_argument('--llmfoundry', type=Path, help='a git checkout of mosaicml/llm-foundry at release/v0.22.0')
    parser.add_argument('--llmfoundry-paths', nargs='+', help=f'instead of {" ".join(llmfoundry_suite.PATHS)}')
    parser.add_argument('--out', type=Path, default=DEFAULT_OUT, help='where the JSON, markdown and logs go')
    parser.add_argument('--test-timeout', type=int, help='seconds per test (pytest-timeout); default: the suite\'s')
    parser.add_argument('--chunk-timeout', type=int, default=5400, help='seconds per pytest run (one path, one side)')
    parser.add_argument('--until', help='UTC HH:MM after which no further path starts (the rest is reported unrun)')
    parser.add_argument('--doc', type=Path, help='write this markdown file from the JSONs in --out (after any runs)')
    args = parser.parse_args(argv)
    if not (args.composer or args.llmfoundry or args.doc):
        parser.print_usage(sys.stderr)
        print(
            'error: nothing to do: give --composer <checkout of mosaicml/composer at v0.32.1> and/or --llmfoundry '
            '<checkout of mosaicml/llm-foundry at release/v0.22.0> (make client-tests COMPOSER_TESTS=<checkout> '
            'LLMFOUNDRY=<checkout>), or --doc <file>',
            file=sys.stderr,
        )
        return 2
    # SIGTERM (or SIGHUP) ends the driver through SystemExit, so the pytest run in flight is stopped with it.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    try:
        return _main(args)
    except SuiteError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = _deadline(args.until)
    suites = []
    if args.llmfoundry:
        suites.append(lambda: llmfoundry_suite.prepare(args.llmfoundry, args.out, paths=args.llmfoundry_paths))
    if args.composer:
        suites.append(lambda: composer_suite.prepare(args.composer, args.out, paths=args.composer_paths))
    results = []
    for prepare in suites:
        suite = prepare()
        if suite.deselected:
            log(f'{suite.name}: deselected on both sides ({len(suite.deselected)}):')
            for entry in suite.deselected:
                print(f'  {entry["test"]}  -- {entry["reason"]}', file=sys.stderr)
        test_timeout = args.test_timeout or suite.test_timeout
        ran = run_suite(suite, args.out, test_timeout, args.chunk_timeout, deadline)
        data = report.build(suite, ran, test_timeout)
        json_path = report.write_json(data, args.out)
        md = report.markdown(data)
        (args.out / f'{suite.name}.md').write_text(md)
        print(md)
        log(f'{suite.name}: {json_path} and {json_path.with_suffix(".md")}')
        results.append(data)
    if args.doc:
        path = doc.write(args.doc, args.out)
        log(f'wrote {path}')
    if not results:
        return 0
    total = sum(len(d['outcomes']) for d in results)
    unexplained = sum(1 for d in results for x in d['differences'] if x['reason'] is None)
    explained = sum(1 for d in results for x in d['differences'] if x['reason'] is not None)
    not_run = [f'{d["suite"]}: {c}' for d in results for c in d['chunks_not_run']]
    print(
        f'{total} tests compared ({", ".join(d["suite"] for d in results)}): {total - explained - unexplained} '
        f'with the same outcome on the fork and on upstream, {explained} explained differences, {unexplained} '
        'unexplained differences',
    )
    if not_run:
        print(f'not run (deadline): {", ".join(not_run)}')
    # A comparison passes when the test's outcome is the same on both sides or its difference is explained.
    print(f'comparisons: {total - unexplained} passed, {unexplained} failed')
    if unexplained:
        return 1
    return 3 if not_run else 0


if __name__ == '__main__':
    sys.exit(main())
