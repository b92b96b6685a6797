import pytest

from minireformer.measuring.complexity import TABLE_3, complexity_table, evaluate, format_complexity, to_latex

SMALL = dict(b=1, l=16, d_model=2, d_ff=8, n_h=2, n_l=3, n_r=2, c=4)


def test_rows_in_the_papers_order():
    rows = complexity_table(**SMALL)
    assert [r["model"] for r in rows] == [
        "Transformer",
        "Reversible Transformer",
        "Chunked Reversible Transformer",
        "LSH Transformer",
        "Reformer",
    ]


def test_values_computed_by_hand():
    # b l d_ff = 128, b n_h l^2 = 512, b l d_model = 32, b n_h l n_r c = 256, b n_h l d_ff = 256
    expected = {
        "Transformer": (max(128, 512) * 3, (128 + 512) * 3),
        "Reversible Transformer": (512, (256 + 512) * 3),
        "Chunked Reversible Transformer": (max(32, 512), (256 + 512) * 3),
        "LSH Transformer": (max(128, 256) * 3, (128 + 256) * 3),
        "Reformer": (max(32, 256), (128 + 256) * 3),
    }
    assert {r["model"]: (r["memory"], r["time"]) for r in complexity_table(**SMALL)} == expected


def test_each_trick_removes_its_factor():
    base = dict(b=8, l=65536, d_model=1024, d_ff=4096, n_h=8, n_l=12, n_r=8, c=128)
    rows = {r["model"]: r for r in complexity_table(**base)}
    deeper = {r["model"]: r for r in complexity_table(**dict(base, n_l=24))}
    assert deeper["Transformer"]["memory"] == 2 * rows["Transformer"]["memory"]  # memory grows with n_l ...
    assert deeper["Reversible Transformer"]["memory"] == rows["Reversible Transformer"]["memory"]  # ... not here
    assert deeper["Reformer"]["memory"] == rows["Reformer"]["memory"]
    longer = {r["model"]: r for r in complexity_table(**dict(base, l=2 * base["l"]))}
    assert longer["Transformer"]["memory"] == 4 * rows["Transformer"]["memory"]  # l^2 attention dominates
    assert longer["Reformer"]["memory"] == 2 * rows["Reformer"]["memory"]  # linear in l
    wider = dict(base, l=64, d_ff=1 << 20)  # d_ff dominates: chunking removes it from memory
    wide = {r["model"]: r for r in complexity_table(**wider)}
    assert wide["Reversible Transformer"]["memory"] == 8 * 64 * (1 << 20)
    assert wide["Chunked Reversible Transformer"]["memory"] == max(8 * 64 * 1024, 8 * 8 * 64 * 64)


def test_formula_text_and_latex():
    assert TABLE_3[0][1] == "max(b·l·d_ff, b·n_h·l²)·n_l"
    assert to_latex(TABLE_3[0][1]) == r"\max(b \cdot l \cdot d_{ff}, b \cdot n_h \cdot l^2) \cdot n_l"
    assert evaluate("(b·l + c²)·n_l", dict(b=2, l=3, c=4, n_l=5)) == (6 + 16) * 5


def test_pretty_table_lists_every_row():
    text = format_complexity(complexity_table(**SMALL))
    for model, memory, time in TABLE_3:
        assert model in text and memory in text and time in text
    assert "60 G" in format_complexity(complexity_table(**dict(SMALL, l=10**5)))  # numbers with SI prefixes


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_numbers_are_named(bad):
    with pytest.raises(ValueError, match="n_r must be a positive integer"):
        complexity_table(**dict(SMALL, n_r=bad))


def test_table_command_prints_the_rows(capsys):
    from minireformer.__main__ import main

    main(["table", "--l", "1024", "--c", "128"])
    out = capsys.readouterr().out
    assert "l=1024" in out and "c=128," not in out and "c=128" in out
    assert all(model in out for model, _, _ in TABLE_3)


def test_table_command_rejects_bad_numbers(capsys):
    from minireformer.__main__ import main

    with pytest.raises(SystemExit):
        main(["table", "--n-h", "0"])
    assert "n_h must be a positive integer" in capsys.readouterr().err


# ---- the table measured on the package's modules (memory on the CPU is exact: these asserts are robust) -------
import torch  # noqa: E402

from minireformer.measuring.complexity import (  # noqa: E402
    MEASURE,
    VARIANTS,
    LayerStack,
    activation_peak,
    build_variant,
    measure_variant,
    measured_table,
    memory_scaling,
    table_values,
)
from minireformer.measuring.report import loglog_slope  # noqa: E402
from minireformer.model import ReformerLM  # noqa: E402

TINY = dict(b=1, l=128, d_model=16, d_ff=64, n_h=2, n_l=2, n_r=2, chunk_len=16, ff_chunk_size=16)


def test_the_papers_own_configuration_by_hand():
    # the command's defaults: b=8, l=64K, d_model=1K, d_ff=4K, n_h=8, n_l=12, n_r=8, c=128²
    rows = {
        r["model"]: r
        for r in complexity_table(b=8, l=1 << 16, d_model=1 << 10, d_ff=1 << 12, n_h=8, n_l=12, n_r=8, c=1 << 14)
    }
    assert rows["Transformer"]["memory"] == 8 * 8 * (1 << 32) * 12  # b n_h l² dominates b l d_ff, times n_l
    assert rows["Reversible Transformer"]["memory"] == 8 * 8 * (1 << 32)
    assert rows["Reformer"]["memory"] == 8 * 8 * (1 << 16) * 8 * (1 << 14)  # b n_h l n_r c
    assert rows["Reformer"]["time"] == (8 * (1 << 16) * (1 << 12) + 8 * 8 * 8 * (1 << 16) * (1 << 14)) * 12
    # the reversible rows' time carries the n_h factor on the d_ff term, as printed
    assert rows["Reversible Transformer"]["time"] - rows["Transformer"]["time"] == 7 * 8 * (1 << 16) * (1 << 12) * 12
    # with the caption's c = 128², LSH's attention term is larger than full attention's until l > n_r c
    assert rows["Reformer"]["memory"] > rows["Reversible Transformer"]["memory"]


def test_every_formula_renders_as_latex():
    for row in complexity_table(**SMALL):
        for key in ("memory_latex", "time_latex"):
            assert "·" not in row[key] and "²" not in row[key] and row[key].count("(") == row[key].count(")")


def test_measured_c_is_the_keys_each_query_scores():
    assert table_values(dict(chunk_len=16)) == {
        **{k: MEASURE[k] for k in ("b", "l", "d_model", "d_ff", "n_h", "n_l", "n_r")},
        "c": 32,
    }


def test_activation_peak_leaves_out_parameter_gradients():
    linear = torch.nn.Linear(200, 300)
    x = torch.randn(100, 200, requires_grad=True)
    # forward: the output [100, 300] (120,000 bytes) and its sum; backward: x.grad [100, 200] (80,000 bytes) after
    # the output is gone; the weight's and bias's gradients (240,000 + 1,200 bytes) are not counted
    assert 120_000 <= activation_peak(linear, x) <= 120_000 + 64
    assert linear.weight.grad is None  # and the module is left as it was


@pytest.mark.parametrize("model", list(VARIANTS))
def test_each_variant_is_built_from_the_packages_modules(model):
    from minireformer.attention import FullSelfAttention, LSHSelfAttention
    from minireformer.reversible import ReversibleSequence

    attention, reversible, chunked = VARIANTS[model]
    stack = build_variant(model, **TINY)
    assert isinstance(stack.layers, ReversibleSequence) == reversible
    layers = list(stack.layers.blocks) if reversible else list(stack.layers)
    assert len(layers) == TINY["n_l"]
    for layer in layers:
        f, g = (layer.f, layer.g) if reversible else layer
        assert isinstance(f.fn, LSHSelfAttention if attention == "lsh" else FullSelfAttention)
        # the chunked rows are reversible: their blocks run the feed-forward in chunks (RevBlock.g_chunk_size)
        chunks = layer.g_chunk_size if reversible else g.fn.chunk_size
        assert chunks == (TINY["ff_chunk_size"] if chunked else None)


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="model must be one of"):
        build_variant("Performer", **TINY)


@pytest.mark.parametrize("reversible", [False, True])
def test_the_layer_stack_is_the_models_middle(reversible):
    torch.manual_seed(0)
    model = ReformerLM(
        vocab_size=11, d_model=16, n_heads=2, d_ff=32, n_layers=2, max_len=40, attention="full", reversible=reversible
    )
    tokens = torch.randint(0, 11, (2, 40))
    x = model.embed(tokens) + model.positions(40)
    assert torch.allclose(model.head(model.norm(LayerStack(model)(x))), model(tokens), atol=1e-6)


@pytest.fixture(scope="module")
def table():
    return {r["model"]: r for r in measured_table(repeats=0, **TINY)}


def test_measured_orderings_follow_the_table(table):
    peak = {m: r["peak"] for m, r in table.items()}
    assert peak["Reformer"] < peak["LSH Transformer"] < peak["Transformer"]
    assert peak["Reversible Transformer"] < peak["Transformer"]
    assert peak["Reformer"] < peak["Chunked Reversible Transformer"]  # LSH removes the l² term
    # a reversible stack keeps only its output for backward: the two halves [b, l, d_model] in float32; with
    # LSH attention also each layer's bucket ids, one byte per token, head and round
    halves = 2 * TINY["b"] * TINY["l"] * TINY["d_model"] * 4
    for model in ("Reversible Transformer", "Chunked Reversible Transformer"):
        assert table[model]["saved"] == halves
    assert table["Reformer"]["saved"] == halves + TINY["n_l"] * TINY["b"] * TINY["n_h"] * TINY["n_r"] * TINY["l"]
    # within a small constant of the formula (counted in float32): more than one l²-sized tensor is alive at
    # the peak (scores, probabilities, their gradients), but not ten
    for row in table.values():
        assert 1 <= row["peak"] / row["formula_bytes"] <= 10, row["model"]


@pytest.fixture(scope="module")
def depth():
    models = ["Transformer", "Reversible Transformer", "LSH Transformer", "Reformer"]
    return memory_scaling(models, "n_l", [2, 8], **TINY), memory_scaling(
        ["Transformer"], "n_l", [2, 8], what="saved", **TINY
    )


def test_memory_against_depth(depth):
    peak, saved = depth
    ratio = {m: b / a for m, (a, b) in peak.items()}
    # the formula says 4x from 2 to 8 layers; the peak adds one layer's backward working set, a constant
    assert ratio["Transformer"] >= 3 and ratio["LSH Transformer"] >= 2.5
    assert ratio["Reformer"] <= 1.2 and ratio["Reversible Transformer"] <= 1.2
    assert saved["Transformer"][1] == 4 * saved["Transformer"][0]  # what is kept for backward: exactly n_l-fold


def test_memory_against_length():
    lengths = [128, 256, 512]
    peak = memory_scaling(["Transformer", "Reformer"], "l", lengths, **TINY)
    assert loglog_slope(lengths, peak["Transformer"]) > 1.7  # shared-QK full attention stores l x l scores
    assert 0.7 < loglog_slope(lengths, peak["Reformer"]) < 1.3  # LSH: linear


def test_chunking_removes_d_ff():
    widths = [64, 1024]  # l = 128, n_h = 2: the feed-forward dominates once d_ff > n_h l = 256
    peak = memory_scaling(
        ["Reversible Transformer", "Chunked Reversible Transformer", "LSH Transformer", "Reformer"],
        "d_ff",
        widths,
        **TINY,
    )
    ratio = {m: b / a for m, (a, b) in peak.items()}
    assert ratio["Reversible Transformer"] >= 2 and ratio["LSH Transformer"] >= 2
    assert ratio["Chunked Reversible Transformer"] <= 1.05
    # the peak is the larger of the attention's and the feed-forward's working sets (Table 3's max); where the
    # LSH attention's is small, what grows with d_ff is a few chunks' hidden activations, b * ff_chunk * d_ff
    # numbers, not the b * l * d_ff of the unchunked models
    chunk_bytes = TINY["b"] * TINY["ff_chunk_size"] * (widths[1] - widths[0]) * 4
    assert peak["Reformer"][1] - peak["Reformer"][0] <= 4 * chunk_bytes
    assert peak["LSH Transformer"][1] - peak["LSH Transformer"][0] > 4 * TINY["l"] / TINY["ff_chunk_size"] * chunk_bytes


def test_measure_variant_times_when_asked():
    result = measure_variant("Reformer", repeats=1, **dict(TINY, l=32))
    assert result["seconds"] > 0 and result["peak"] > result["saved"] > 0


def test_bad_scaling_arguments():
    with pytest.raises(ValueError, match="what must be"):
        memory_scaling(["Reformer"], "l", [8], what="time")


def test_table_command_measures(capsys):
    from minireformer.__main__ import main

    main(["table", "--measure", "--l", "64", "--d-model", "16", "--repeats", "0"])
    out = capsys.readouterr().out
    assert "l=64" in out and "d_model=16" in out and "c = 2 chunk_len = 64" in out
    assert all(model in out for model in VARIANTS) and "peak/formula" in out


def test_table_command_measure_rejects_c(capsys):
    from minireformer.__main__ import main

    with pytest.raises(SystemExit):
        main(["table", "--measure", "--c", "64"])
    assert "--c cannot be set with --measure" in capsys.readouterr().err


def test_step_time_experiment_takes_the_median_of_interleaved_steps_per_model_and_length(monkeypatch):
    from minireformer.measuring import complexity

    calls = []

    def fake_interleaved(steps, repeats, device):  # runs each step once, reports fixed times
        calls.append((sorted(steps), repeats))
        for step in steps.values():
            step()
        return {name: [3.0, 1.0, 2.0 + i] for i, name in enumerate(steps)}

    monkeypatch.setattr(complexity, "interleaved", fake_interleaved)
    times = complexity.step_time_experiment(
        (32, 64), repeats=3, d_model=16, d_ff=32, n_h=2, chunk_len=16, ff_chunk_size=16
    )
    assert list(times) == list(complexity.STEP_TIME_MODELS)
    assert calls == [(sorted(complexity.STEP_TIME_MODELS), 3)] * 2  # one interleaved round per length
    assert times == {name: [min(3.0, 2.0 + i)] * 2 for i, name in enumerate(complexity.STEP_TIME_MODELS)}
