# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Property tests of the inputs: ``COMPOSER_SIGNAL_HANDLING``, ``enable_signal_handling`` and
``COMPOSER_SIGNAL_CLOSE_TIMEOUT``.

These run in the test process: resolving the flags happens before any signal handler is installed (importing Composer
installs none).
"""

import contextlib
import os
from typing import Optional

import pytest

hypothesis = pytest.importorskip('hypothesis')
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from composer.utils.signal_handling import (  # noqa: E402
    CLOSE_TIMEOUT_ENV_VAR,
    DEFAULT_CLOSE_TIMEOUT,
    SIGNAL_HANDLING_ENV_VAR,
    resolve_close_timeout,
    resolve_signal_handling,
)


@contextlib.contextmanager
def environment(value: Optional[str], name: str = SIGNAL_HANDLING_ENV_VAR):
    """``name=value`` (unset for ``None``) for one example (hypothesis reruns a test body, not its fixtures)."""
    saved = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


TRUE_SPELLINGS = ('1', 'true', 'yes', 'on')
FALSE_SPELLINGS = ('0', 'false', 'no', 'off')
#: What an environment variable can hold: any character but NUL (and lone surrogates, which cannot be encoded).
ENVIRONMENT_CHARACTERS = st.characters(blacklist_characters='\x00', blacklist_categories=('Cs',))
#: Python's str.strip() whitespace that an environment variable can carry (no NUL).
WHITESPACE = st.text(alphabet=' \t\n\r\x0b\x0c', max_size=3)


@st.composite
def any_case(draw, words):
    word = draw(st.sampled_from(words))
    flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return ''.join(c.upper() if flip else c for c, flip in zip(word, flips))


@settings(max_examples=200, deadline=None)
@given(word=st.one_of(any_case(TRUE_SPELLINGS), any_case(FALSE_SPELLINGS)), before=WHITESPACE, after=WHITESPACE)
def test_every_accepted_spelling_in_any_case_with_whitespace(word, before, after):
    with environment(before + word + after):
        assert resolve_signal_handling(None) is (word.lower() in TRUE_SPELLINGS)


@settings(max_examples=300, deadline=None)
@given(value=st.text(alphabet=ENVIRONMENT_CHARACTERS, max_size=12))
def test_everything_else_raises_a_value_error_naming_the_variable(value):
    hypothesis.assume(value.strip().lower() not in TRUE_SPELLINGS + FALSE_SPELLINGS)
    with environment(value), pytest.raises(ValueError, match=SIGNAL_HANDLING_ENV_VAR) as info:
        resolve_signal_handling(None)
    assert 'Accepted values' in str(info.value)


@settings(max_examples=100, deadline=None)
@given(flag=st.booleans(), value=st.text(alphabet=ENVIRONMENT_CHARACTERS, max_size=5))
def test_an_explicit_argument_wins_over_the_environment(flag, value):
    with environment(value):
        assert resolve_signal_handling(flag) is flag


@settings(max_examples=100, deadline=None)
@given(seconds=st.one_of(st.floats(min_value=0, allow_infinity=True), st.integers(0, 10**6)), spaces=WHITESPACE)
def test_the_close_timeout_is_any_number_of_seconds_from_zero(seconds, spaces):
    with environment(f'{spaces}{seconds!r}{spaces}', CLOSE_TIMEOUT_ENV_VAR):
        assert resolve_close_timeout() == float(seconds)


@settings(max_examples=200, deadline=None)
@given(value=st.text(alphabet=ENVIRONMENT_CHARACTERS, max_size=8))
def test_a_close_timeout_that_is_not_a_number_from_zero_is_a_value_error_naming_the_variable(value):
    try:
        hypothesis.assume(not value.strip() or not float(value) >= 0)
    except ValueError:
        pass  # not a number at all
    with environment(value, CLOSE_TIMEOUT_ENV_VAR):
        if not value.strip():
            assert resolve_close_timeout() == DEFAULT_CLOSE_TIMEOUT  # empty means unset
            return
        with pytest.raises(ValueError, match=CLOSE_TIMEOUT_ENV_VAR):
            resolve_close_timeout()


def test_the_close_timeout_defaults_to_the_launchers_clean_up_timeout():
    with environment(None, CLOSE_TIMEOUT_ENV_VAR):
        assert resolve_close_timeout() == DEFAULT_CLOSE_TIMEOUT == 30.0


NOT_BOOLS = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.lists(st.booleans(), max_size=2),
    st.just(b'1'),
)


@settings(max_examples=100, deadline=None)
@given(value=NOT_BOOLS)
def test_a_non_bool_enable_signal_handling_is_a_type_error(value):
    with pytest.raises(TypeError, match='enable_signal_handling must be True, False or None'):
        resolve_signal_handling(value)
