"""forktool.lint without its tools: the license check, the changed-file list and the hooks' exclusions."""

import subprocess
import sys

from tests.fork_build.conftest import ROOT

sys.path.insert(0, str(ROOT))

from forktool import lint  # noqa: E402


def test_license_header_as_upstreams_insert_license_hook_accepts_it(tmp_path):
    f = tmp_path / 'm.py'
    f.write_text('# Copyright 2024 MosaicML Composer authors\n# SPDX-License-Identifier: Apache-2.0\n\n"""Doc."""\n')
    assert lint.check_license(f, lint.LICENSE_TEXT)
    f.write_text(
        '#!/usr/bin/env python\n# Copyright 2022 MosaicML Composer authors\n'
        '# SPDX-License-Identifier: Apache-2.0\n',
    )  # --allow-past-years; not on the first line
    assert lint.check_license(f, lint.LICENSE_TEXT)
    f.write_text('# Copyright 2021-2026 MosaicML Composer authors\n# SPDX-License-Identifier: Apache-2.0\n')
    assert lint.check_license(f, lint.LICENSE_TEXT)
    f.write_text('# Copyright 2024 Someone else\n# SPDX-License-Identifier: Apache-2.0\n')
    assert not lint.check_license(f, lint.LICENSE_TEXT)
    f.write_text('"""Doc."""\n# Copyright 2024 MosaicML Composer authors\n')
    assert not lint.check_license(f, lint.LICENSE_TEXT)
    f.write_text('\n' * 5 + '# Copyright 2024 MosaicML Composer authors\n# SPDX-License-Identifier: Apache-2.0\n')
    assert not lint.check_license(f, lint.LICENSE_TEXT)  # the hook looks at the first 5 lines only


def test_hook_exclusions_are_upstreams():
    assert lint.PYDOCSTYLE_EXCLUDE.search('tests/signal_handling/test_flag.py')
    assert lint.PYDOCSTYLE_EXCLUDE.search('composer/trainer/activation_checkpointing.py')
    assert not lint.PYDOCSTYLE_EXCLUDE.search('composer/utils/signal_handling.py')
    assert lint.GLOBAL_EXCLUDE.search('.ci/release_tests/x.py')


def test_changed_files_are_added_or_modified_since_the_merge_base(tmp_path):

    def git(*args):
        subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args],
                       cwd=tmp_path,
                       check=True,
                       capture_output=True)

    git('init', '-q', '-b', 'main')
    for name in ('keep.py', 'change.py', 'remove.py', 'move.py'):
        (tmp_path / name).write_text(f'# {name}\n')
    git('add', '-A')
    git('commit', '-qm', 'base')
    git('tag', 'base')
    (tmp_path / 'change.py').write_text('# changed\n')
    (tmp_path / 'remove.py').unlink()
    (tmp_path / 'move.py').rename(tmp_path / 'moved.py')
    (tmp_path / 'new.rst').write_text('Title\n=====\n')
    git('add', '-A')
    git('commit', '-qm', 'branch')
    assert sorted(lint.changed_files(tmp_path, 'base')) == ['change.py', 'moved.py', 'new.rst']
