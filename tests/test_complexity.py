import pytest

from minireformer.complexity import TABLE_3, complexity_table, evaluate, format_table, human, to_latex

SMALL = dict(b=1, l=16, d_model=2, d_ff=8, n_h=2, n_l=3, n_r=2, c=4)


def test_rows_in_the_papers_order():
    rows = complexity_table(**SMALL)
    assert [r["model"] for r in rows] == ["Transformer", "Reversible Transformer", "Chunked Reversible Transformer",
                                          "LSH Transformer", "Reformer"]


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
    text = format_table(complexity_table(**SMALL))
    for model, memory, time in TABLE_3:
        assert model in text and memory in text and time in text
    assert human(3.2e9) == "3.2 G" and human(512) == "512"


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
