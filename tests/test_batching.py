"""The token-budget batcher: buckets, batch formation within the budget, order restored."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cbert.batching import Batch, bucket_for, plan_batches, restore_order, seq_buckets


def test_buckets_are_sixteens_then_sixty_fours_up_to_the_model_maximum():
    assert seq_buckets(512) == (16, 32, 48, 64, 80, 96, 112, 128, 192, 256, 320, 384, 448, 512)
    assert seq_buckets(40) == (16, 32, 40)  # a maximum that is no multiple is a bucket of its own
    assert seq_buckets(510)[-2:] == (448, 510)
    assert seq_buckets(8) == (8,)
    assert seq_buckets(128)[-1] == 128


def test_bucket_for_is_the_smallest_that_holds_the_sequence():
    assert [bucket_for(n, 512) for n in (1, 16, 17, 128, 129, 193, 511, 512)] == [16, 16, 32, 128, 192, 256, 512, 512]
    with pytest.raises(ValueError, match="513 tokens does not fit a model of 512"):
        bucket_for(513, 512)
    with pytest.raises(ValueError, match="0 tokens"):
        bucket_for(0, 512)


def test_a_worked_example():
    # Budget 64 tokens: four 16-token rows fit; the 20-token row needs the 32 bucket, and padding
    # the 16-token row to 32 costs less than a forward of 16 tokens.
    lengths = [5, 20, 3, 16, 9, 2]
    batches = plan_batches(lengths, max_len=64, max_tokens=64, forward_tokens=16)
    assert batches == [Batch((5, 2, 0, 4), 16), Batch((3, 1), 32)]
    assert [b.padded_tokens for b in batches] == [64, 64]
    # Padding is never free with forward_tokens=0: each batch keeps to one bucket.
    assert plan_batches(lengths, max_len=64, max_tokens=64) == [Batch((5, 2, 0, 4), 16), Batch((3,), 16),
                                                                 Batch((1,), 32)]


def test_forward_tokens_trades_padding_for_fewer_forwards():
    lengths = [10] * 4 + [30] * 4  # four rows in the 16 bucket, four in the 32 bucket
    assert len(plan_batches(lengths, 64, 10_000, forward_tokens=63)) == 2  # padding 4 rows by 16 = 64 > 63
    assert plan_batches(lengths, 64, 10_000, forward_tokens=64) == [Batch(tuple(range(8)), 32)]


def test_max_batch_size_caps_the_rows():
    batches = plan_batches([4] * 10, max_len=64, max_tokens=10_000, max_batch_size=3)
    assert [len(b.indices) for b in batches] == [3, 3, 3, 1]


def test_an_item_over_the_budget_alone_gets_a_batch_of_its_own():
    batches = plan_batches([3, 500, 4], max_len=512, max_tokens=256)
    assert batches == [Batch((0, 2), 16), Batch((1,), 512)]


@pytest.mark.parametrize("kwargs, message", [
    (dict(lengths=[3], max_len=64, max_tokens=0), "max_tokens=0"),
    (dict(lengths=[3], max_len=64, max_tokens=64, max_batch_size=0), "max_batch_size=0"),
    (dict(lengths=[3, 65], max_len=64, max_tokens=64), r"lengths\[1\] = 65"),
    (dict(lengths=[0], max_len=64, max_tokens=64), r"lengths\[0\] = 0"),
    (dict(lengths=[3], max_len=0, max_tokens=64), "max_len=0"),
    (dict(lengths=[3], max_len=64, max_tokens=64, forward_tokens=-1), "forward_tokens=-1"),
])
def test_bad_arguments_name_themselves(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan_batches(**kwargs)


def test_restore_order_rejects_results_that_do_not_fit():
    batches = plan_batches([3, 4, 5], max_len=64, max_tokens=32)
    with pytest.raises(ValueError, match="result lists"):
        restore_order(batches, [])
    with pytest.raises(ValueError, match="rows came back with"):
        restore_order(batches, [[1]] * len(batches))
    with pytest.raises(ValueError, match="more than one batch"):
        restore_order([Batch((0,), 16), Batch((0,), 16)], [["a"], ["b"]])


@settings(max_examples=300, deadline=None)
@given(lengths=st.lists(st.integers(1, 512), max_size=200), max_tokens=st.integers(1, 20_000),
       max_batch_size=st.one_of(st.none(), st.integers(1, 64)), forward_tokens=st.integers(0, 5000))
def test_batches_place_every_item_once_within_budget_and_restore_order(lengths, max_tokens, max_batch_size,
                                                                         forward_tokens):
    batches = plan_batches(lengths, 512, max_tokens, max_batch_size, forward_tokens)
    placed = sorted(i for b in batches for i in b.indices)
    assert placed == list(range(len(lengths)))  # every item exactly once
    buckets = seq_buckets(512)
    for b in batches:
        assert b.indices, "an empty batch"
        assert b.seq in buckets and b.seq == bucket_for(max(lengths[i] for i in b.indices), 512)
        assert b.padded_tokens <= max_tokens or len(b.indices) == 1  # over budget only when alone
        assert max_batch_size is None or len(b.indices) <= max_batch_size
        assert [lengths[i] for i in b.indices] == sorted(lengths[i] for i in b.indices)
    # Greedy: a batch closes only when the next item would break the budget or the row cap, or pad
    # the batch's rows by more than a forward costs.
    for b, nxt in zip(batches, batches[1:]):
        need = bucket_for(lengths[nxt.indices[0]], 512)
        assert ((len(b.indices) + 1) * need > max_tokens or len(b.indices) * (need - b.seq) > forward_tokens
                or (max_batch_size is not None and len(b.indices) == max_batch_size))
    # Results computed per batch come back in the caller's order.
    results = restore_order(batches, [[("row", i) for i in b.indices] for b in batches])
    assert results == [("row", i) for i in range(len(lengths))]
