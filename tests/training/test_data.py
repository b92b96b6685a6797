import pytest
import torch

from minireformer.training.data import ByteCorpus, duplication_batch, duplication_target_mask, load_corpus


def test_duplication_sequences_are_0w0w():
    x = duplication_batch(5, 16, n_symbols=7, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 16) and x.dtype == torch.int64
    assert torch.all(x[:, 0] == 0) and torch.all(x[:, 8] == 0)
    assert torch.equal(x[:, 1:8], x[:, 9:])
    assert x[:, 1:8].min() >= 1 and x[:, 1:8].max() <= 7


def test_duplication_is_seeded():
    a = duplication_batch(3, 64, generator=torch.Generator().manual_seed(1))
    b = duplication_batch(3, 64, generator=torch.Generator().manual_seed(1))
    c = duplication_batch(3, 64, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_target_mask_selects_exactly_the_copyable_half():
    x = duplication_batch(2, 16, generator=torch.Generator().manual_seed(3))
    mask = duplication_target_mask(16)
    assert mask.shape == (15,) and mask.sum() == 7
    targets = x[:, 1:]  # target t is token t + 1
    assert torch.equal(targets[:, mask], x[:, 9:])  # the second w, each a copy of the token 8 places before
    assert torch.equal(targets[:, mask], x[:, 1:8])


@pytest.mark.parametrize("length", [3, 7, 2])
def test_bad_length_is_named(length):
    with pytest.raises(ValueError, match="length must be an even integer >= 4"):
        duplication_batch(1, length)


def test_default_corpus_exists_and_windows_are_contiguous(tmp_path):
    data = load_corpus(max_bytes=100_000)
    assert data.dtype == torch.uint8 and len(data) == 100_000
    assert b"def " in bytes(data[:20_000].tolist())
    corpus = ByteCorpus(data, val_fraction=0.1)
    windows = corpus.batch("train", 4, 32, generator=torch.Generator().manual_seed(0))
    assert windows.shape == (4, 33)
    train = bytes(corpus.splits["train"].tolist())
    for w in windows:
        assert bytes(w.tolist()) in train


def test_corpus_from_a_file_and_errors(tmp_path):
    path = tmp_path / "text.txt"
    path.write_bytes(b"hello reformer " * 10)
    assert bytes(load_corpus(path).tolist()) == b"hello reformer " * 10
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_corpus(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="fewer than seq_len"):
        ByteCorpus(load_corpus(path)).batch("val", 1, 100)
