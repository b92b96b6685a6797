"""Sampling from a causal model: reproducible, greedy at top_k=1, nearly greedy at a low temperature."""

import pytest
import torch

from minireformer.model import ReformerLM, generate
from minireformer.training.data import decode_bytes, encode_text


def tiny(attention="lsh", **options):
    torch.manual_seed(0)
    return ReformerLM(
        256,
        d_model=32,
        n_heads=2,
        d_ff=64,
        n_layers=2,
        max_len=32,
        chunk_len=8,
        n_rounds=2,
        attention=attention,
        **options,
    )


def greedy_reference(model, prompt, n_new):
    """The slow twin: the argmax of the last position's logits, one token at a time (full attention: no RNG)."""
    tokens = prompt[None]
    for _ in range(n_new):
        with torch.no_grad():
            logits = model(tokens[:, -model.config.max_len :])[:, -1]
        tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    return tokens[0]


def test_text_round_trip():
    text = "def f(x):\n    return 'é'"
    tokens = encode_text(text)
    assert tokens.dtype == torch.int64 and len(tokens) == len(text.encode())
    assert decode_bytes(tokens) == text
    assert decode_bytes(torch.tensor([0xC3])) == "\ufffd"  # half a UTF-8 character is replaced, not an error
    with pytest.raises(ValueError, match="0..255"):
        decode_bytes([256])
    with pytest.raises(TypeError, match="text must be a str"):
        encode_text(b"bytes")


@pytest.mark.parametrize("attention", ["lsh", "full"])
def test_seeded_sampling_is_reproducible_and_leaves_the_global_rng_alone(attention):
    model, prompt = tiny(attention), encode_text("def ")
    before = torch.get_rng_state()
    a = generate(model, prompt, 12, generator=torch.Generator().manual_seed(1))
    b = generate(model, prompt, 12, generator=torch.Generator().manual_seed(1))
    c = generate(model, prompt, 12, generator=torch.Generator().manual_seed(2))
    assert torch.equal(torch.get_rng_state(), before)
    assert a.shape == (16,) and torch.equal(a[:4], prompt)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_k_1_is_greedy_and_a_low_temperature_is_nearly_so():
    model, prompt = tiny("full"), encode_text("import ")
    greedy = greedy_reference(model, prompt, 10)
    assert torch.equal(generate(model, prompt, 10, top_k=1, generator=torch.Generator().manual_seed(5)), greedy)
    assert torch.equal(generate(model, prompt, 10, top_k=1, temperature=3.0), greedy)  # whatever the temperature
    assert torch.equal(
        generate(model, prompt, 10, temperature=1e-4, generator=torch.Generator().manual_seed(5)), greedy
    )
    hot = generate(model, prompt, 10, temperature=100.0, generator=torch.Generator().manual_seed(5))
    assert not torch.equal(hot, greedy)  # at a high temperature nearly uniform over 256 bytes


def test_top_k_only_draws_from_the_k_most_likely():
    model = tiny("full")
    prompt = encode_text("x")
    with torch.no_grad():
        allowed = model(prompt[None])[0, -1].topk(3).indices
    draws = torch.stack(
        [
            generate(model, prompt, 1, top_k=3, temperature=50.0, generator=torch.Generator().manual_seed(s))[-1]
            for s in range(40)
        ]
    )
    assert set(draws.tolist()) <= set(allowed.tolist())
    assert len(set(draws.tolist())) > 1  # and not always the same one: the temperature flattens the three


def test_batched_prompts_and_a_sliding_window_past_max_len():
    model = tiny("lsh")
    prompts = torch.stack([encode_text("abcd"), encode_text("wxyz")])
    out = generate(model, prompts, 40, generator=torch.Generator().manual_seed(0))  # 44 > max_len = 32
    assert out.shape == (2, 44) and torch.equal(out[:, :4], prompts)
    assert model.training  # the mode is restored
    model.eval()
    assert not model.training and torch.equal(generate(model, prompts, 0), prompts)  # n_new = 0: the prompt


def test_bad_arguments_are_refused_with_a_clear_message():
    model, prompt = tiny("full"), encode_text("ab")
    cases = [
        (dict(temperature=0.0), "temperature must be a finite number > 0"),
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(top_k=0), "top_k must be a positive integer"),
        (dict(top_k=2.5), "top_k"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            generate(model, prompt, 3, **kwargs)
    with pytest.raises(ValueError, match="more than max_len=32"):
        generate(model, torch.zeros(33, dtype=torch.int64), 1)
    with pytest.raises(ValueError, match="n_new must be an integer >= 0"):
        generate(model, prompt, -1)
    with pytest.raises(ValueError, match="non-empty integer tensor"):
        generate(model, torch.zeros(0, dtype=torch.int64), 1)
    with pytest.raises(ValueError, match="non-empty integer tensor"):
        generate(model, torch.zeros(3), 1)
    with pytest.raises(ValueError, match=r"0\.\.255"):
        generate(model, torch.tensor([300]), 1)
    with pytest.raises(ValueError, match="causal"):
        generate(tiny("full", causal=False), prompt, 1)
