"""The data of the training lessons: the paper's duplication task and a byte-level text corpus.

Duplication (Reformer, section 2.1): "each training and testing example has the form 0w0w where
w in {1, ..., N}* is a sequence of symbols ranging from 1 to N (we use N = 127 in our experiments)",
length 1024 (w of 511 symbols). The second w can be copied from the first, so a model that attends to the
right place predicts it perfectly; accuracy is counted on the second half only.

Text: byte-level language modelling, as on enwik8 (whose symbols are bytes). The default corpus is the
Python standard library's own source, present on every machine that runs this course; any text file
(enwik8, once downloaded) works the same way.
"""

import sysconfig
from pathlib import Path

import torch


def duplication_batch(batch_size, length, n_symbols=127, *, generator=None, device=None):
    """A batch of ``0 w 0 w`` sequences, ``[batch_size, length]`` int64, w drawn uniformly from 1..n_symbols.

    ``length`` must be even (two halves ``0 w``); the vocabulary is ``n_symbols + 1`` (0 is the separator).
    """
    if length < 4 or length % 2:
        raise ValueError(f"length must be an even integer >= 4, got {length}")
    if n_symbols < 1:
        raise ValueError(f"n_symbols must be >= 1, got {n_symbols}")
    w = torch.randint(1, n_symbols + 1, (batch_size, length // 2 - 1), generator=generator)
    zero = torch.zeros(batch_size, 1, dtype=torch.int64)
    return torch.cat([zero, w, zero, w], dim=1).to(device)  # [batch, length]


def duplication_target_mask(length, device=None):
    """Which next-token targets count: those of the second w, ``[length - 1]`` bool.

    Target t is token t + 1 (predicted from tokens 0..t); the second w occupies tokens L/2 + 1 .. L - 1.
    """
    return torch.arange(1, length, device=device) > length // 2


def default_corpus_files():
    """The standard library's top-level ``.py`` files, sorted: the same text on every machine with this Python."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))
    if not files:
        raise FileNotFoundError(f"no Python sources found in {stdlib}; pass a text file as the corpus instead")
    return files


def load_corpus(path=None, *, max_bytes=None):
    """A byte-level corpus as a uint8 tensor: ``path`` (any file: text, enwik8) or the standard library's source."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"corpus file {path} does not exist")
        with open(path, "rb") as f:
            data = f.read(max_bytes) if max_bytes else f.read()
    else:
        chunks, size = [], 0
        for file in default_corpus_files():
            chunks.append(file.read_bytes())
            size += len(chunks[-1])
            if max_bytes and size >= max_bytes:
                break
        data = b"".join(chunks)[:max_bytes]
    if len(data) < 2:
        raise ValueError(f"corpus {path or 'stdlib'} has {len(data)} bytes; need at least 2")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


class ByteCorpus:
    """A byte corpus split into train and validation parts, served as random windows (vocabulary 256)."""

    vocab_size = 256

    def __init__(self, data, val_fraction=0.05):
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        split = int(len(data) * (1 - val_fraction))
        self.splits = {"train": data[:split], "val": data[split:]}

    def check_length(self, seq_len):
        """Raise ``ValueError`` unless both splits hold a window of ``seq_len + 1`` bytes."""
        for split, data in self.splits.items():
            if len(data) < seq_len + 1:
                total = sum(len(d) for d in self.splits.values())
                raise ValueError(
                    f"the corpus has {total:,} bytes, so its {split} split has {len(data):,}: fewer than "
                    f"seq_len + 1 = {seq_len + 1} (use a larger corpus or a shorter --seq-len)"
                )

    def batch(self, split, batch_size, seq_len, *, generator=None, device=None):
        """``batch_size`` random windows of ``seq_len + 1`` bytes from ``split``, as int64 ``[batch, seq_len + 1]``."""
        data = self.splits[split]
        if len(data) < seq_len + 1:
            raise ValueError(f"the {split} split has {len(data)} bytes, fewer than seq_len + 1 = {seq_len + 1}")
        starts = torch.randint(0, len(data) - seq_len, (batch_size,), generator=generator)
        windows = torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()])
        return windows.long().to(device)


def encode_text(text):
    """A string as the byte-level model's tokens: its UTF-8 bytes, int64 ``[n_bytes]``."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.int64)


def decode_bytes(tokens):
    """Byte tokens ``[n]`` (0..255) back to text; bytes that are not valid UTF-8 become U+FFFD."""
    values = torch.as_tensor(tokens).flatten().tolist()
    if any(not 0 <= v <= 255 for v in values):
        raise ValueError("tokens must be bytes in 0..255")
    return bytes(values).decode("utf-8", errors="replace")
