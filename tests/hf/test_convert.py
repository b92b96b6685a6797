"""HF transformers' Reformer loaded into ReformerLM (minireformer.hf): randomly initialized HF models shaped like the
two published ones (shrunk in width and length, and one at full width) give HF's logits, causal and not, at lengths that
are and are not a multiple of the chunk length, and the same 20 greedy tokens. In float64 the two are equal to 1e-10
everywhere; in float32 to 1e-5 wherever HF's float32 is exact, and where it is not (a causal model with several hash
rounds) ours is the closer to the exact value. transformers is the optional `compare` extra; the README's test command
installs it, so CI runs these."""

import math
import string
import time

import pytest
import torch

pytest.importorskip(
    "transformers.models.reformer.modeling_reformer",
    reason="transformers is not installed (pip install -c constraints.txt -e '.[compare]')",
)
from transformers import ReformerConfig  # noqa: E402

from minireformer.hf import convert as hf  # noqa: E402
from minireformer.hf.convert import (  # noqa: E402
    PUBLISHED,
    SMALL,
    changed_options,
    config_from_huggingface,
    from_huggingface,
    hf_greedy,
    random_hf_model,
    with_fixed_rotations,
)
from minireformer.lsh import HF  # noqa: E402
from minireformer.model import generate  # noqa: E402

CRIME, ENWIK8 = "google/reformer-crime-and-punishment", "google/reformer-enwik8"
# lengths: a multiple of the chunk lengths' lcm, one HF pads (not a multiple), and one no longer than the shortest chunk
LENGTHS = {CRIME: (64, 61, 5), ENWIK8: (64, 57, 6)}
TOLERANCE = 1e-5
FLOAT64 = 1e-10  # float64 rounding: HF's self score -1e5 has an ulp of 1.5e-11 there


def tokens(vocab_size, length, *, batch=2, seed=3):
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def largest_difference(hf_model, ours, x):
    with torch.no_grad():
        return (hf_model(x).logits - ours(x)).abs().max().item()


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("name", [CRIME, ENWIK8], ids=["crime_and_punishment", "enwik8"])
def test_logits_equal_hf_in_float64(name, causal):
    theirs = random_hf_model(name, causal=causal).double()
    ours = from_huggingface(theirs)
    assert not ours.training and ours.config.causal == causal and next(ours.parameters()).dtype == torch.float64
    for length in LENGTHS[name]:
        assert largest_difference(theirs, ours, tokens(theirs.config.vocab_size, length)) < FLOAT64, length


# HF's float32 is exact wherever no token attends only to copies of itself: with one hash round (crime and
# punishment) or without the causal mask, that is everywhere
@pytest.mark.parametrize(
    "name, causal",
    [(CRIME, True), (CRIME, False), (ENWIK8, False)],
    ids=["crime_and_punishment-causal", "crime_and_punishment-bidirectional", "enwik8-bidirectional"],
)
def test_logits_equal_hf_in_float32(name, causal):
    theirs = random_hf_model(name, causal=causal)
    ours = from_huggingface(theirs)
    for length in LENGTHS[name]:
        assert largest_difference(theirs, ours, tokens(theirs.config.vocab_size, length)) < TOLERANCE, length


def test_where_hf_float32_rounds_ours_does_not():
    """Causal, several rounds (enwik8): a token whose windows hold only itself (the first, at least) attends to its
    own value in every round. HF scores it -1e5 and takes a logsumexp over two copies of itself, -1e5 + log 2, which
    float32 holds only to its ulp there, 0.008: HF's output is that value times 1 + 6e-5, and the error travels up the
    layers. Ours stays within 1e-5 of the float64 model with the same rotations; HF's does not."""
    theirs = random_hf_model(ENWIK8, causal=True)
    ours = from_huggingface(theirs)
    exact = with_fixed_rotations(ours, torch.float64)
    x = tokens(258, 64)
    with torch.no_grad():
        truth = exact(x)
        ours_error, hf_error = (ours(x) - truth).abs().max().item(), (theirs(x).logits - truth).abs().max().item()
        assert (exact(x.clone()) == truth).all()  # fixed rotations: the same function every pass
    assert ours_error < TOLERANCE < 1e-4 < hf_error, (ours_error, hf_error)


def test_several_hash_rounds_with_factorized_buckets():
    for causal, dtype, tolerance in (
        (True, torch.float64, FLOAT64),
        (False, torch.float64, FLOAT64),
        (False, torch.float32, TOLERANCE),
    ):
        theirs = random_hf_model(CRIME, causal=causal, seed=5, num_hashes=3).to(dtype)
        ours = from_huggingface(theirs)
        assert ours.config.n_rounds == 3 and ours.config.bucket_factors == (4, 8)
        for length in (64, 45):
            assert largest_difference(theirs, ours, tokens(320, length, seed=length)) < tolerance, (causal, dtype)


def test_the_published_crime_and_punishment_shape_at_full_width():
    """Its real widths (d_model 256, 2 heads of 64, axial positions 512 x 1024 of widths 64 and 192, chunks of 64,
    buckets 64 x 128), random weights, at a length HF pads (100 -> 128)."""
    theirs = random_hf_model(CRIME, small=False, seed=2)
    ours = from_huggingface(theirs)
    count = sum(p.numel() for p in ours.parameters())  # appendix C: "2.75M parameters, 10.5 MiB in float32"
    # (HF's has 320 more: an lm_head.bias, untied from the decoder.bias its forward uses)
    assert count == 2_748_224 and round(count * 4 / 2**20, 1) == 10.5
    assert largest_difference(theirs, ours, tokens(320, 100, batch=1)) < TOLERANCE


def test_a_window_of_one_chunk_after_instead_of_before_converts_and_overrides_reach_hf():
    theirs = random_hf_model(
        CRIME, causal=False, local_num_chunks_before=0, local_num_chunks_after=1, local_attn_chunk_length=4
    ).double()  # SMALL's chunk of 8 overridden
    ours = from_huggingface(theirs)
    assert ours.config.local_options == dict(chunk_len=4, look_back=0, look_ahead=1) and ours.config.pad_multiple == 8
    for length in (64, 29, 12):
        assert largest_difference(theirs, ours, tokens(320, length)) < FLOAT64, length


def test_the_converted_configurations():
    crime = config_from_huggingface(ReformerConfig(**PUBLISHED[CRIME]))
    assert (crime.d_model, crime.n_heads, crime.d_head, crime.n_layers) == (256, 2, 64, 6)
    assert crime.bucket_factors == (64, 128) and crime.pad_multiple == 64 and crime.axial_dims == (64, 192)
    assert crime.conventions == HF and crime.n_buckets is None
    assert crime.merge == "concat" and not crime.out_bias and crime.norm_eps == 1e-12 and crime.activation == "relu"
    enwik8 = config_from_huggingface(ReformerConfig(**PUBLISHED[ENWIK8]))
    assert enwik8.kinds().count("lsh") == 3 and enwik8.n_buckets == 512 and enwik8.n_rounds == 4
    assert enwik8.pad_multiple == math.lcm(256, 128) == 256 and enwik8.local_options["chunk_len"] == 128
    changed = {option: (default, value) for option, default, value in changed_options(crime)}
    assert changed["merge"] == ("mean", "concat") and changed["norm_eps"] == (1e-5, 1e-12)
    assert "reversible" not in changed and "causal" not in changed  # the course's defaults already


@pytest.mark.parametrize("name", [CRIME, ENWIK8], ids=["crime_and_punishment", "enwik8"])
def test_greedy_generation_gives_the_same_tokens(name):
    theirs = random_hf_model(name, seed=4)
    ours = from_huggingface(theirs)
    prompt = tokens(theirs.config.vocab_size, 5, batch=1)[0]
    expected = hf_greedy(theirs, prompt, 20)
    mine = generate(ours, prompt, 20, top_k=1, generator=torch.Generator().manual_seed(0))
    assert expected.shape == (25,) and mine.tolist() == expected.tolist()
    assert len(set(expected[5:].tolist())) > 1  # not one token repeated: the comparison could fail
    cached = hf.hf_cached_greedy(theirs, prompt, 20)  # HF's own generate, with its bucket cache
    assert cached.shape == (25,) and cached[:5].tolist() == prompt.tolist()
    if name == ENWIK8:  # plain buckets: its cache gives what its full recomputation gives
        assert cached.tolist() == expected.tolist()


def test_without_hash_seed_the_rotations_are_new_every_pass():
    """As HF draws them (the reversible backward replays them: tests/hf/test_model.py, the published options)."""
    theirs = random_hf_model(ENWIK8, hash_seed=None)
    ours = from_huggingface(theirs)
    assert ours.config.hash_seed is None
    x = tokens(258, 40)
    with torch.no_grad():
        assert not torch.equal(ours(x), ours(x))


def test_a_local_copy_loads_and_samples_and_a_missing_one_is_none_at_once(tmp_path, monkeypatch):
    from transformers import ReformerTokenizer

    theirs = random_hf_model(CRIME, seed=6, hash_seed=None)
    folder = str(tmp_path / "copy")
    theirs.save_pretrained(folder)
    letters = ["<pad>", "</s>", "<unk>", "\u2581"] + list(string.ascii_letters + ".,")
    ReformerTokenizer(vocab={c: i for i, c in enumerate(letters)}, merges=[]).save_pretrained(folder)
    loaded = hf.published(folder)
    x = tokens(320, 8)  # one chunk: no hashing, so HF's random rotations (no hash_seed) play no part
    assert largest_difference(loaded, from_huggingface(theirs), x) < TOLERANCE
    sample = hf.sample_published(folder, "A few", 12)  # 6 tokens, then 12 sampled: hashed from the 9th on
    assert sample["tokens"].shape == (6 + 12,) and sample["text"].startswith("A few")
    assert sample["prompt_gap"] < TOLERANCE
    assert hf.sample_published(folder, "A few", 12)["tokens"].tolist() == sample["tokens"].tolist()  # seeded
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty cache"))
    monkeypatch.setattr(hf, "hub_reachable", lambda: False)
    start = time.perf_counter()
    assert hf.published(CRIME) is None
    assert time.perf_counter() - start < 20  # no 30 s of HF's retries


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="ReformerModelWithLMHead"):
        from_huggingface(torch.nn.Linear(2, 2))
    theirs = random_hf_model(CRIME)
    for option, value, match in (
        ("attn_layers", ["local", "lsh", "full", "lsh", "local", "lsh"], "attn_layers"),
        ("num_buckets", None, "num_buckets"),
        ("hidden_act", "tanh", "hidden_act"),
        ("lsh_num_chunks_after", 1, "lsh_num_chunks_after"),
        ("lsh_num_chunks_before", 2, "lsh_num_chunks_before [+] lsh_num_chunks_after must be"),
        ("local_num_chunks_after", 1, "local_num_chunks_before [+] local_num_chunks_after"),
        ("local_attn_chunk_length", 0, "config.local_attn_chunk_length must be a positive"),
    ):
        config = ReformerConfig(**dict(PUBLISHED[CRIME], **SMALL[CRIME]))
        setattr(config, option, value)
        with pytest.raises(ValueError, match=match):
            config_from_huggingface(config)
    ours = from_huggingface(theirs)
    with pytest.raises(ValueError, match="max_len"):
        ours(tokens(320, 129))
    state = theirs.state_dict()
    head = "lm_head.decoder.weight"  # [320, 64]: the same numbers as [64, 320], not the same tensor
    for broken, match in (
        (dict(state, **{head: state[head].T}), "must have shape \\(320, 64\\)"),
        ({k: v for k, v in state.items() if k != head}, "got nothing"),
    ):
        with pytest.raises(ValueError, match=match):
            hf.load_weights(from_huggingface(theirs), broken)


def test_the_command_prints_the_table_and_compares_trained_weights_with_hashing_seeded(tmp_path, capsys):
    from minireformer.__main__ import main

    trained = random_hf_model(CRIME, seed=7, hash_seed=None)  # stands in for Google's: no hash_seed, as published
    trained.save_pretrained(tmp_path / "trained")
    assert largest_difference(trained, from_huggingface(trained), tokens(320, 64)) > 1e-3  # unseeded: other buckets
    main(["hf", "--published", str(tmp_path / "trained"), "--lengths", "64", "100", "--device", "cpu"])
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.startswith("reformer-") or line.startswith("trained")]
    assert len(rows) == 12 and [row[1] for row in rows].count("small") == 8
    gaps = {(row[0], row[1], row[-2]): float(row[-1]) for row in rows if row[1] == "trained"}
    assert gaps[("trained", "trained", "float32")] < TOLERANCE and gaps[("trained", "trained", "float64")] < FLOAT64
