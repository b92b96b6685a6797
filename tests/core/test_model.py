import itertools
from dataclasses import asdict

import pytest
import torch

from minireformer.attention import FullSelfAttention, LSHSelfAttention
from minireformer.lsh import PAPER, TRAX
from minireformer.model import ReformerConfig, ReformerLM

SMALL = dict(vocab_size=11, d_model=16, n_heads=2, d_ff=24, n_layers=2, max_len=32, n_rounds=2, chunk_len=8)


def tokens(batch=2, length=32, vocab=11, seed=0):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


SWITCHES = [
    dict(attention=a, reversible=r, ff_chunk_size=f, causal=c, merge=m)
    for a, r, f, c, m in itertools.product(["lsh", "full"], [True, False], [None, 5], [True, False], ["mean", "concat"])
    if r or m == "mean"  # merge only exists for the reversible stack
] + [dict(attention=a, reversible=r, axial_shape=(4, 8)) for a in ("lsh", "full") for r in (True, False)]


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_every_switch_combination_runs_forward_and_backward(switches):
    torch.manual_seed(0)
    model = ReformerLM(**dict(SMALL, **switches))
    x = tokens(length=29)  # not a multiple of chunk_len or ff_chunk_size: padding and a short last chunk
    logits = model(x)
    assert logits.shape == (2, 29, 11) and torch.isfinite(logits).all()
    logits.logsumexp(-1).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if "embed" not in name:  # only the embedding rows of tokens that occur get a gradient
            assert p.grad.abs().sum() > 0, name


def test_separate_qk_full_attention_and_its_parameters():
    model = ReformerLM(**dict(SMALL, attention="full", shared_qk=False))
    names = {n for n, _ in model.named_parameters()}
    assert any(n.endswith("to_q.weight") for n in names) and not any(n.endswith("to_qk.weight") for n in names)
    model(tokens()).sum().backward()
    with pytest.raises(ValueError, match="separate Q and K"):
        model.use_attention("lsh")


@pytest.mark.parametrize("attention", ["lsh", "full"])
@pytest.mark.parametrize("merge", ["mean", "concat"])
def test_reversible_backward_gives_the_gradients_of_ordinary_autograd(attention, merge):
    """The memory-free backward against ordinary autograd through the same blocks and weights, in float64,
    with dropout on (its masks and LSH's rotations must be replayed exactly).

    A ``reversible=False`` model is a different function (one residual stream, not two), so its weights
    cannot simply be copied in; the reversible stack runs both ways with ``layers.reversible``."""
    torch.manual_seed(0)
    model = ReformerLM(**dict(SMALL, attention=attention, merge=merge, dropout=0.1, ff_chunk_size=8)).double()
    x = tokens()

    def gradients(reversible):
        model.layers.reversible = reversible
        model.zero_grad()
        torch.manual_seed(1)
        loss = model(x).logsumexp(-1).mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_rev, grads_rev = gradients(True)
    loss_plain, grads_plain = gradients(False)
    torch.testing.assert_close(loss_rev, loss_plain, rtol=0, atol=1e-12)
    for name in grads_plain:
        torch.testing.assert_close(grads_rev[name], grads_plain[name], rtol=1e-9, atol=1e-11, msg=name)


def test_ordinary_model_is_a_pre_norm_transformer():
    torch.manual_seed(0)
    model = ReformerLM(**dict(SMALL, attention="full", reversible=False)).double()
    x = tokens()
    h = model.embed(x) + model.positions.table[:32]
    for attention, feed_forward in model.layers:
        h = h + attention.fn(attention.norm(h))
        h = h + feed_forward.fn(feed_forward.norm(h))
    torch.testing.assert_close(model(x), model.head(model.norm(h)))


def test_causal_model_never_looks_ahead():
    torch.manual_seed(0)
    model = ReformerLM(**dict(SMALL, attention="full")).eval()
    x = tokens()
    y = x.clone()
    y[:, 20:] = (y[:, 20:] + 1) % 11  # change the future
    torch.testing.assert_close(model(x)[:, :20], model(y)[:, :20], rtol=0, atol=1e-6)
    assert not torch.allclose(model(x)[:, 20:], model(y)[:, 20:])


def test_use_attention_keeps_the_parameters_and_matches_a_model_built_that_way():
    torch.manual_seed(0)
    model = ReformerLM(**SMALL).eval()
    before = {n: p for n, p in model.named_parameters()}
    model.use_attention("full")
    after = dict(model.named_parameters())
    assert list(before) == list(after) and all(before[n] is after[n] for n in before)  # the same tensors
    assert all(isinstance(w.fn, FullSelfAttention) for w in model.attention_layers())
    built_full = ReformerLM(**dict(SMALL, attention="full")).eval()
    built_full.load_state_dict(model.state_dict())  # names line up across attention kinds
    torch.testing.assert_close(model(tokens()), built_full(tokens()))
    model.use_attention("lsh", n_rounds=8)
    assert [w.fn.n_rounds for w in model.attention_layers()] == [8, 8]
    assert all(before[n] is p for n, p in model.named_parameters())
    model.use_attention("lsh")
    assert [w.fn.n_rounds for w in model.attention_layers()] == [2, 2]  # back to the config's rounds
    with pytest.raises(ValueError, match="kind must be 'lsh' or 'full'"):
        model.use_attention("sparse")
    with pytest.raises(ValueError, match="n_rounds only applies to LSH"):
        model.use_attention("full", n_rounds=4)


@pytest.mark.parametrize("attention", ["lsh", "full"])
@pytest.mark.parametrize("reversible", [True, False])
def test_attention_weights_reproduce_the_layers_output(attention, reversible):
    torch.manual_seed(0)
    model = ReformerLM(**dict(SMALL, attention=attention, reversible=reversible)).eval()
    x = tokens()
    seen = {}
    wrapper = model.attention_layers()[1]
    hook = wrapper.fn.register_forward_hook(lambda module, args, out: seen.update(x=args[0], out=out))
    torch.manual_seed(3)
    model(x)
    hook.remove()
    torch.manual_seed(3)  # the same rotations for layer 0 and layer 1 as in that forward pass
    weights = model.attention_weights(x, layer=1)
    assert weights.shape == (2, 2, 32, 32)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 32))
    assert weights.triu(1).abs().max() == 0  # causal: nothing from the future
    attn = wrapper.fn
    rebuilt = attn.merge_heads(weights @ attn.heads(attn.to_v(seen["x"])))
    torch.testing.assert_close(rebuilt, seen["out"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"layer must be an integer in \[0, 2\)"):
        model.attention_weights(x, layer=2)


def test_separate_qk_attention_weights():
    torch.manual_seed(0)
    model = ReformerLM(**dict(SMALL, attention="full", shared_qk=False, causal=False)).eval()
    weights = model.attention_weights(tokens(), layer=0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 32))
    assert weights.triu(1).sum() > 0  # bidirectional


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(attention="sparse"), "attention must be 'lsh' or 'full'"),
        (dict(shared_qk=False), "LSH attention needs shared_qk=True"),
        (dict(d_model=15), r"d_model \(15\) must be divisible by n_heads \(2\)"),
        (dict(n_layers=0), "n_layers must be a positive integer"),
        (dict(n_layers=2.0), "n_layers must be a positive integer"),
        (dict(axial_shape=(4, 4)), "axial_shape must be"),
        (dict(merge="sum"), "merge must be 'mean' or 'concat'"),
        (dict(conventions="pytorch"), "conventions must be a Conventions"),
        (dict(conventions=dict(scale=-1)), "scale must be None or a number > 0"),
    ],
)
def test_bad_configuration_is_named(bad, message):
    with pytest.raises(ValueError, match=message):
        ReformerConfig(**dict(SMALL, **bad))


def test_bad_tokens_are_named():
    model = ReformerLM(**SMALL)
    with pytest.raises(ValueError, match="tokens must be an integer tensor"):
        model(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="exceeds max_len=32"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_a_model_runs_on_an_attention_function_of_the_learner_and_gives_the_same_logits():
    from minireformer.course import solutions

    torch.manual_seed(0)
    model = (
        ReformerLM(vocab_size=11, d_model=16, n_heads=2, d_ff=32, n_layers=2, max_len=40, chunk_len=8, n_rounds=2)
        .double()
        .eval()
    )
    tokens = torch.randint(11, (2, 37))
    torch.manual_seed(1)
    fast = model(tokens)
    model.use_attention("lsh", 2, attention_fn=solutions.lsh_attention)
    assert all(layer.fn.attention_fn is solutions.lsh_attention for layer in model.attention_layers())
    torch.manual_seed(1)  # the same rotations
    assert torch.allclose(model(tokens), fast, atol=1e-10)
    with pytest.raises(ValueError, match="attention_fn only appl"):
        model.use_attention("full", attention_fn=solutions.lsh_attention)
    with pytest.raises(TypeError, match="attention_fn must be a function"):
        model.use_attention("lsh", attention_fn="mine")
    with pytest.raises(ValueError, match="needs look_back=1"):
        LSHSelfAttention(16, 2, look_back=2, attention_fn=solutions.lsh_attention)
    layer = model.attention_layers()[0].fn
    layer.look_back = 0  # a plain attribute, set after the layer was made: refused at the call, not ignored
    with pytest.raises(ValueError, match="needs look_back=1"):
        model(tokens)


def test_conventions_travel_in_the_config_and_survive_a_saved_one():
    model = ReformerLM(**dict(SMALL, conventions="trax"))
    assert model.config.conventions == TRAX and all(w.fn.conventions == TRAX for w in model.attention_layers())
    assert ReformerConfig(**asdict(model.config)).conventions == TRAX  # saved as a dict of its fields
    assert ReformerLM(**SMALL).config.conventions == PAPER


@pytest.mark.parametrize("name", ["reversible", "causal", "shared_qk"])
def test_the_config_refuses_a_switch_that_is_not_a_bool(name):
    with pytest.raises(TypeError, match=f"{name} must be True or False, got 'no'"):
        ReformerConfig(vocab_size=8, **{name: "no"})
