import torch

from diffusion_notes.toy.digits import NUM_CLASSES, load_split


def test_split_shapes_range_and_labels():
    x_train, y_train = load_split("train")
    x_test, y_test = load_split("test")
    assert x_train.shape[1:] == (1, 8, 8) and x_train.dtype == torch.float32
    assert x_train.shape[0] + x_test.shape[0] == 1797  # every digit of load_digits, once
    assert x_test.shape[0] == 360
    assert x_train.min() == -1 and x_train.max() == 1
    assert y_train.dtype == torch.int64 and set(y_train.tolist()) == set(range(NUM_CLASSES))
    # Stratified: every class has roughly a fifth of its digits in the test split.
    for digit in range(NUM_CLASSES):
        frac = (y_test == digit).sum() / ((y_test == digit).sum() + (y_train == digit).sum())
        assert 0.17 < frac < 0.23


def test_split_is_fixed_and_disjoint():
    x_a, y_a = load_split("train")
    x_b, y_b = load_split("train")
    assert torch.equal(x_a, x_b) and torch.equal(y_a, y_b)
    x_test, _ = load_split("test")
    train_rows = {tuple(r) for r in x_a.reshape(len(x_a), -1).tolist()}
    overlap = sum(tuple(r) in train_rows for r in x_test.reshape(len(x_test), -1).tolist())
    assert overlap <= 5  # load_digits holds a few exact duplicates; the split itself never repeats an index


def test_load_split_returns_copies():
    x, _ = load_split("train")
    x.fill_(0)
    assert load_split("train")[0].min() == -1


def test_unknown_split_is_rejected():
    import pytest

    with pytest.raises(ValueError, match="split"):
        load_split("validation")
