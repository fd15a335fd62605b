"""The upstream-only patches (``patches/upstream-only/``: upstream's docs and tests, for pull requests only).

They never reach the build (the release artifacts have no ``docs/``), and CI has no upstream checkout to apply them to
(``git apply --check`` against v0.32.1 and the dev tip is a maintainer step), so this checks what can be checked here:
complete DEP-3 headers with a topic, diffs that parse, and a new page that docutils parses without a warning.
"""

import os
import subprocess

from forktool import series
from forktool.rstcheck import check_rst

#: The pull request topics (see the README's "How the fork is made").
TOPICS = {'lifecycle', 'preemption', 'atomic-checkpoints'}
PAGE = 'docs/source/notes/signal_handling.rst'


def _patches():
    return series.read_series(series.UPSTREAM_ONLY_DIR)


def test_headers_are_complete_and_name_a_topic():
    patches = _patches()
    assert patches
    assert series.check_headers(patches, series.UPSTREAM_ONLY_FIELDS) == []
    for patch in patches:
        assert patch.fields['Topic'] in TOPICS, patch.name
        # Upstream's docs and its tests of the changed behaviour, which the release artifacts do not carry.
        assert patch.files() and all(f.startswith(('docs/', 'tests/')) for f in patch.files()), patch.name
        assert not any(f.startswith(series.FORK_ONLY_TESTS) for f in patch.files()), patch.name
    # Named as `python -m forktool export-upstream-only` writes them, and the series lists every file.
    assert [p.name[:5] for p in patches] == [f'{i:04d}-' for i in range(1, len(patches) + 1)]
    assert all(p.text.startswith('From 0000000000000000000000000000000000000000 ') for p in patches)
    assert sorted(p.name for p in series.UPSTREAM_ONLY_DIR.glob('*.patch')) == sorted(p.name for p in patches)


def test_a_missing_topic_is_reported(tmp_path):
    patch = _patches()[0]
    text = ''.join(line for line in patch.text.splitlines(keepends=True) if not line.startswith('Topic:'))
    (tmp_path / patch.name).write_text(text, encoding='utf-8')
    problems = series.check_headers([series.parse_patch(tmp_path / patch.name)], series.UPSTREAM_ONLY_FIELDS)
    assert problems == [f'{patch.name}: DEP-3 header field Topic is missing or empty']
    assert series.check_headers([series.parse_patch(tmp_path / patch.name)]) == []


def test_the_diffs_apply_in_order_to_the_new_page_and_it_parses_cleanly(tmp_path):
    # Only the page the series creates can be rebuilt without an upstream checkout: `--include` it.
    env = {**os.environ, 'GIT_CEILING_DIRECTORIES': str(tmp_path.parent)}
    touched = 0
    for patch in _patches():
        diff = tmp_path / f'{patch.name}.diff'
        diff.write_text(patch.diff, encoding='utf-8')
        proc = subprocess.run(['git', 'apply', '--include', PAGE, str(diff)],
                              cwd=tmp_path,
                              env=env,
                              capture_output=True,
                              text=True)
        assert proc.returncode == 0, (patch.name, proc.stderr)
        touched += PAGE in patch.files()
    assert touched >= 2  # created by the lifecycle patch, extended by the preemption patch
    text = (tmp_path / PAGE).read_text(encoding='utf-8')
    assert check_rst(text, PAGE) == []
    for fact in (
        'enable_signal_handling',
        'COMPOSER_SIGNAL_HANDLING',
        'save_on_preemption=True',
        'request_stop',
        'SystemExit(143)',
        '--signal=TERM@',
        'terminationGracePeriodSeconds',
    ):
        assert fact in text, fact


def test_check_rst_reports_problems():
    assert check_rst('Title\n=====\n\nSee :class:`.Trainer` |:rocket:|.\n') == []
    assert check_rst('Title\n=====\n\n.. no-such-directive::\n')
    assert check_rst('Title\n=====\n\n.. seealso::\n\n    broken `quote\n')
