"""The benchmark commands at tiny sizes: rows, the printed table, errors, the optional compare path, and the
memory scaling the benchmark reports (exact on the CPU). No timing asserts: timings vary."""

import pytest

from minireformer import fast_lsh
from minireformer.__main__ import main
from minireformer.measuring import anchors, bench

KEYS = {"model", "length", "batch", "step_s", "token_us", "peak_mb"}


@pytest.fixture(scope="module")
def attention_rows():
    return bench.bench_attention((256, 1024), (1, 4), total_tokens=1024, repeats=1, device="cpu")


def test_attention_rows_have_the_keys_and_sane_values(attention_rows):
    assert {r["model"] for r in attention_rows} == {"LSH-1", "LSH-4", "full (shared-QK)", "dense SDPA"}
    for row in attention_rows:
        assert set(row) == KEYS
        assert row["batch"] * row["length"] == 1024
        assert row["step_s"] > 0 and row["peak_mb"] > 0
        assert row["token_us"] == pytest.approx(row["step_s"] / 1024 * 1e6)


def test_lsh_memory_is_linear_and_full_attention_quadratic(attention_rows):
    # tokens per step are fixed (batch = 1024 / L): linear memory stays flat, quadratic grows like L
    lsh_growth, length_growth = bench.memory_growth(attention_rows, "LSH-4")
    full_growth, _ = bench.memory_growth(attention_rows, "full (shared-QK)")
    assert length_growth == 4
    assert 0.8 < lsh_growth < 1.25
    assert full_growth > 2.5  # the [b, h, L, L] scores dominate; 4x in the limit
    lsh_4 = {r["length"]: r["peak_mb"] for r in attention_rows if r["model"] == "LSH-4"}
    full = {r["length"]: r["peak_mb"] for r in attention_rows if r["model"] == "full (shared-QK)"}
    assert lsh_4[1024] < full[1024]


def test_full_attention_is_skipped_past_the_memory_limit():
    rows = bench.bench_attention((256,), (1,), total_tokens=256, repeats=1, sdpa=False, full_memory_limit=1)
    assert rows[-1]["model"] == "full (shared-QK)" and "needs" in rows[-1]["skipped"]
    assert "note" in bench.format_bench(rows)


def test_bucket_replay_rows(monkeypatch):
    hashed = []
    real_hash_block = fast_lsh.hash_block
    monkeypatch.setattr(fast_lsh, "hash_block", lambda *a: hashed.append(1) or real_hash_block(*a))
    rows = bench.bench_bucket_replay((0, 1), n_blocks=2, length=128, device="cpu")
    assert [r["seed"] for r in rows] == [0, 1] and all(r["n_blocks"] == 2 and r["length"] == 128 for r in rows)
    assert all(float(r["replayed"]) < 1e-5 and float(r["rehashed"]) >= 0 for r in rows)
    # per seed: 2 blocks hash in the forward pass twice (both ways), and again only when not replayed
    assert len(hashed) == 2 * (2 + 2 + 2)
    assert "hashed again" in bench.format_bench(rows)


def test_bad_lengths_are_rejected():
    with pytest.raises(ValueError, match="divide total_tokens"):
        bench.bench_attention((300,), (1,), total_tokens=1024)
    with pytest.raises(ValueError, match="'lsh', 'full' or 'sdpa'"):
        bench.attention_layer("sparse")


def test_cli_prints_the_table(capsys):
    main(["bench", "attention", "--lengths", "128,256", "--total-tokens", "256", "--rounds", "2", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "| model | L | batch | s/step | µs/token | peak MiB |" in out
    assert "| LSH-2 | 128 | 2 |" in out and "| dense SDPA | 256 | 1 |" in out


def test_scaling_interleaves_equal_token_steps(monkeypatch):
    seen = {}

    def fake(entries, repeats, device, peak=True):
        seen.update({length: tuple(x.shape) for length, _, x in entries})
        times = {256: [1.0, 2.0, 1.0], 1024: [1.5, 2.0, 1.1]}  # pair ratios 1.5, 1.0, 1.1
        return {length: (None, None, times[length]) for length, _, _ in entries}

    monkeypatch.setattr(bench, "_interleaved", fake)
    ratio = bench.scaling_interleaved(256, 1024, total_tokens=1024, repeats=3, device="cpu")
    assert ratio == pytest.approx(1.1)  # the median pair, not the ratio of medians (1.5 / 1.0)
    assert seen == {256: (4, 256, bench.D_MODEL), 1024: (1, 1024, bench.D_MODEL)}
    with pytest.raises(ValueError, match="divide total_tokens"):
        bench.scaling_interleaved(300, 1024, total_tokens=1024)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "attention", "--lengths", "300", "--total-tokens", "1024"], "divide total_tokens"),
        (["bench", "attention", "--rounds", "two"], "comma-separated integers"),
        (["bench", "reversible", "--depths", "0"], "positive integers"),
        (["bench", "attention", "--repeats", "0"], "--repeats"),
        (["bench", "sideways"], "invalid choice"),
    ],
)
def test_cli_errors_are_clear(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_compare_skips_missing_packages(monkeypatch):
    real = anchors.importlib.import_module

    def no_references(name, *args, **kwargs):
        if name.startswith(("transformers", "reformer_pytorch")):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(anchors.importlib, "import_module", no_references)
    rows, notes = bench.compare_attention(128, n_rounds=1, repeats=1, device="cpu")
    # ours at the paper's bucket count and at reformer-pytorch's (L / chunk: 128 / 64 = 2), nothing to compare with
    assert [r["model"] for r in rows] == ["minireformer LSH-1", "minireformer LSH-1, 2 buckets"]
    assert not any("vs_best" in r for r in rows)
    assert "n_buckets=4" in notes[0]
    assert sum("is not installed" in note for note in notes) == 2
    rows, notes = bench.bench_reversible((1,), length=128, ff_chunk_size=None, repeats=1, compare=True)
    assert any("reformer-pytorch is not installed" in note for note in notes)
    assert not any(r["model"].startswith("reformer-pytorch") for r in rows)


def test_reversible_rows_and_flat_memory():
    rows, _ = bench.bench_reversible((1, 2, 3), length=1024, ff_chunk_size=None, repeats=1, device="cpu")
    assert [r["model"] for r in rows] == ["ordinary", "reversible"] * 3
    assert all("ratio" in r for r in rows if r["model"] == "reversible")
    peak = {(r["model"], r["n_blocks"]): r["peak_mb"] for r in rows}
    # ordinary residuals keep every block's activations; reversible ones only the parameters' gradients
    ordinary = peak["ordinary", 3] - peak["ordinary", 1]
    reversible = peak["reversible", 3] - peak["reversible", 1]
    assert ordinary > 2 * reversible
    assert peak["reversible", 3] < peak["ordinary", 3]
    # without the parameters' gradients (3 blocks allocate 3 blocks' worth) the reversible peak is flat in depth
    # from 2 blocks on (from the second block down, the backward also holds the inputs it rebuilt)
    act = {(r["model"], r["n_blocks"]): r["act_mb"] for r in rows}
    assert act["reversible", 3] <= 1.01 * act["reversible", 2]
    assert act["ordinary", 3] > 2 * act["ordinary", 1]
    for row in rows:
        assert 0 < row["act_mb"] < row["peak_mb"]


def lesson_cell(lesson, marker):
    """The source of the code cell of ``notebooks/<lesson>*.ipynb`` that contains ``marker``."""
    import json
    from pathlib import Path

    path = next((Path(__file__).parents[2] / "notebooks").glob(f"{lesson}_*.ipynb"))
    cells = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    (source,) = [s for s in cells if marker in s]
    return source


def test_a_step_over_the_budget_is_out_of_memory_and_the_sweep_goes_on():
    # full attention's [b, h, L, L] tensors: 16, 32 and 64 MiB at 256, 512, 1024 with 1024 tokens per step
    rows = bench.bench_attention(
        (256, 512, 1024),
        (4,),
        total_tokens=1024,
        repeats=1,
        device="cpu",
        sdpa=False,
        full_memory_limit=2**40,
        memory_budget=48 * 2**20,
    )
    status = {(r["model"], r["length"]): r.get("skipped", "ok") for r in rows}
    assert status == {
        ("LSH-4", 256): "ok",
        ("LSH-4", 512): "ok",
        ("LSH-4", 1024): "ok",
        ("full (shared-QK)", 256): "ok",
        ("full (shared-QK)", 512): "ok",
        ("full (shared-QK)", 1024): "out of memory",
    }
    assert "out of memory" in bench.format_bench(rows)


def test_appendix_as_memory_claim_holds_when_full_attention_skips_the_long_lengths():
    """At full scale full attention runs at the short lengths only. Lesson 02 compared its growth with the
    LSH rows' length ratio (32 against a growth of 1.0): the lesson failed on every GPU. (Now in appendix A.)"""
    rows = bench.bench_attention(
        (256, 512, 1024), (4,), total_tokens=1024, repeats=1, device="cpu", sdpa=False, full_memory_limit=40 * 2**20
    )  # skips full attention at 1024
    assert any(r["model"].startswith("full") and "skipped" in r for r in rows)
    exec(lesson_cell("appendix_a", 'bench.memory_growth(rows, "full (shared-QK)")'), {"bench": bench, "rows": rows})
    with pytest.raises(ValueError, match="full \\(shared-QK\\) ran at 1 length\\(s\\); a growth needs two"):
        bench.memory_growth([r for r in rows if r["length"] != 512], "full (shared-QK)")


def test_bench_out_writes_the_rows_with_the_command_and_the_machine(tmp_path, capsys):
    from minireformer.measuring.report import read_run

    out = tmp_path / "buckets.json"
    main(["bench", "buckets", "--length", "64", "--out", str(out)])
    run = read_run(out)
    assert run["command"] == f"python -m minireformer bench buckets --length 64 --out {out}"
    assert [row["seed"] for row in run["results"]] == list(range(12))
    assert all(row["length"] == 64 and float(row["replayed"]) < 1e-4 for row in run["results"])
    assert f"wrote {out}" in capsys.readouterr().out
