import random
import time

import pytest

from panda.data.packing import fill_rate, pack
from panda.data.records import Example, Segment
from panda.data.tokenize import encode_example


def reference_best_fit_decreasing(lengths, capacity):
    """Quadratic textbook version with the same tie-break: tightest row, then the one that got that space first."""
    rows, free, since = [], [], []
    for clock, index in enumerate(sorted(range(len(lengths)), key=lambda i: -lengths[i])):
        fitting = [r for r in range(len(rows)) if free[r] >= lengths[index]]
        if fitting:
            row = min(fitting, key=lambda r: (free[r], since[r]))
        else:
            row = len(rows)
            rows.append([])
            free.append(capacity)
            since.append(clock)
        rows[row].append(index)
        free[row] -= lengths[index]
        since[row] = clock
    return rows


def check_valid(lengths, rows, capacity):
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= capacity for row in rows)


def test_small_case_exact():
    # 7 opens row 0, 5 row 1, 4 row 2; 3 fits row 1 exactly; 2 goes to row 2 (free 4), 1 fills row 0
    assert pack([3, 5, 2, 7, 1, 4], 8) == [[3, 4], [1, 0], [5, 2]]


def test_best_fit_not_first_fit():
    # 7 → row 0 (3 free), 5 → row 1 (5 free), 4 → row 1 (1 free); the 1 goes to the tightest row, row 1,
    # where first-fit would have put it into row 0
    assert pack([7, 5, 4, 1], 10) == [[0], [1, 2, 3]]


def test_ties_are_stable():
    assert pack([2, 2, 2, 2], 4) == [[0, 1], [2, 3]]
    assert pack([4, 4, 1, 1], 5) == [[0, 2], [1, 3]]


def test_matches_reference_on_random_cases():
    rng = random.Random(0)
    for _ in range(200):
        capacity = rng.randint(1, 40)
        lengths = [rng.randint(1, capacity) for _ in range(rng.randint(0, 60))]
        rows = pack(lengths, capacity)
        check_valid(lengths, rows, capacity)
        assert rows == reference_best_fit_decreasing(lengths, capacity)


def test_high_fill_rate_on_real_encoded_paragraphs(tokenizer, chinese_paragraphs):
    lengths = [len(seq.input_ids) for text in chinese_paragraphs
               for seq in encode_example(Example((Segment(text, True),)), tokenizer, 512)]
    rows = pack(lengths, 512)
    check_valid(lengths, rows, 512)
    assert fill_rate(lengths, rows, 512) > 0.99


def test_fast_and_full_on_many_sft_like_lengths():
    rng = random.Random(1)
    lengths = [min(2048, max(8, int(rng.lognormvariate(5.5, 0.9)))) for _ in range(300_000)]
    start = time.perf_counter()
    rows = pack(lengths, 2048)
    assert time.perf_counter() - start < 10  # < 1 s here; a quadratic packer would take hours
    assert sum(map(len, rows)) == len(lengths)
    assert fill_rate(lengths, rows, 2048) > 0.99


@pytest.mark.parametrize("bad", [0, 9])
def test_lengths_out_of_range_are_refused(bad):
    with pytest.raises(ValueError, match=f"sequence 1 has length {bad}"):
        pack([3, bad], 8)
