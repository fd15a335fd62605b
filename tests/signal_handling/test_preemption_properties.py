# Copyright 2022 MosaicML Composer authors
# SPDX-License-Identifier: Apache-2.0

"""Property tests of the preemption inputs: ``save_on_preemption``, ``COMPOSER_SAVE_ON_PREEMPTION``, and the stop
votes that every rank sums.

These run in the test process, as the lifecycle's ``test_properties.py`` (whose ``environment`` helper and
strategies are repeated here: test modules do not import each other).
"""

import contextlib
import os
import signal
from typing import Optional

import pytest

hypothesis = pytest.importorskip('hypothesis')
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from composer.utils.preemption import SAVE_ON_PREEMPTION_ENV_VAR, StopRequest, resolve_save_on_preemption  # noqa: E402


@contextlib.contextmanager
def environment(value: Optional[str], name: str = SAVE_ON_PREEMPTION_ENV_VAR):
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


NOT_BOOLS = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.lists(st.booleans(), max_size=2),
    st.just(b'1'),
)


@settings(max_examples=200, deadline=None)
@given(word=st.one_of(any_case(TRUE_SPELLINGS), any_case(FALSE_SPELLINGS)), before=WHITESPACE, after=WHITESPACE)
def test_every_accepted_spelling_in_any_case_with_whitespace(word, before, after):
    with environment(before + word + after):
        assert resolve_save_on_preemption(None, can_save=True) is (word.lower() in TRUE_SPELLINGS)


@settings(max_examples=300, deadline=None)
@given(value=st.text(alphabet=ENVIRONMENT_CHARACTERS, max_size=12))
def test_everything_else_raises_a_value_error_naming_the_variable(value):
    hypothesis.assume(value.strip().lower() not in TRUE_SPELLINGS + FALSE_SPELLINGS)
    with environment(value), pytest.raises(ValueError, match=SAVE_ON_PREEMPTION_ENV_VAR) as info:
        resolve_save_on_preemption(None, can_save=True)
    assert 'Accepted values' in str(info.value)


@settings(max_examples=100, deadline=None)
@given(flag=st.booleans(), value=st.text(alphabet=ENVIRONMENT_CHARACTERS, max_size=5))
def test_an_explicit_argument_wins_over_the_environment(flag, value):
    with environment(value):
        assert resolve_save_on_preemption(flag, can_save=True) is flag


def test_save_on_preemption_is_off_when_the_variable_is_unset():
    with environment(None):
        assert resolve_save_on_preemption(None, can_save=True) is False


def test_the_variable_on_a_trainer_without_save_folder_warns_once_and_runs_without_it(caplog):
    with environment('1'), caplog.at_level('WARNING', 'composer.utils.signal_handling'):
        assert resolve_save_on_preemption(None, can_save=False) is False
    assert [r.levelname for r in caplog.records] == ['WARNING']
    message = caplog.records[0].getMessage()
    assert SAVE_ON_PREEMPTION_ENV_VAR in message and 'save_folder' in message


@pytest.mark.parametrize('value', ['1', '0', None])
def test_an_explicit_true_without_save_folder_stays_a_value_error(value):
    with environment(value), pytest.raises(ValueError, match='save_folder'):
        resolve_save_on_preemption(True, can_save=False)


@settings(max_examples=25, deadline=None)
@given(value=NOT_BOOLS)
def test_a_non_bool_save_on_preemption_is_a_type_error_at_construction(value):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from composer import Trainer
    from composer.models import ComposerClassifier

    model = ComposerClassifier(torch.nn.Linear(2, 2), num_classes=2)
    dataset = TensorDataset(torch.randn(4, 2), torch.randint(0, 2, (4,)))
    with pytest.raises(TypeError, match='save_on_preemption must be True, False or None'):
        Trainer(model=model, train_dataloader=DataLoader(dataset), max_duration='1ba', save_on_preemption=value)


@settings(max_examples=200, deadline=None)
@given(
    votes=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=8),
    late_request=st.booleans(),
    token_counts=st.lists(st.integers(0, 2**40), min_size=8, max_size=8),
)
def test_stop_votes_decide_alike_on_every_rank(votes, late_request, token_counts):
    """Sum the ranks' (requested, preempted) votes as the all-reduce does: all ranks decide alike."""
    ranks = []
    for requested, preempted in votes:
        stop = StopRequest()
        if requested or preempted:
            stop.request(signum=signal.SIGTERM if preempted else None)
        ranks.append(stop)
    world_size = len(ranks)
    # What the trainer all-reduces: each rank's tokens with its vote packed in; the sum unpacks to the summed tokens.
    tokens = token_counts[:world_size]
    packed_sum = sum(stop.pack(count, world_size) for stop, count in zip(ranks, tokens))
    assert [stop.unpack(packed_sum, world_size) for stop in ranks] == [sum(tokens)] * world_size
    if late_request:  # on rank 0, after the all-reduce: with several ranks it waits for the next batch's tally
        ranks[0].request()
    expected = any(requested or preempted for requested, preempted in votes)
    if world_size > 1:
        assert [stop.should_stop(world_size) for stop in ranks] == [expected] * world_size
    else:
        assert ranks[0].should_stop(world_size) == (expected or late_request)
    any_preempted = any(preempted for _, preempted in votes)
    assert [stop.preempted for stop in ranks] == [any_preempted] * world_size
    assert all(stop.exit_code == 128 + signal.SIGTERM for stop in ranks)
    for stop in ranks:
        stop.reset()
        assert not stop.should_stop(world_size) and not stop.preempted and stop.vote(world_size) == 0
