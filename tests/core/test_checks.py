"""The one argument check (minireformer.checks)."""

import pytest

from minireformer.checks import check_int


@pytest.mark.parametrize(
    "value, least, message",
    [
        (0, 1, "n must be a positive integer, got 0"),
        (True, 1, "got True"),
        (2.0, 1, "got 2.0"),
        (-1, 0, "n must be an integer >= 0, got -1"),
        (1, 2, "n must be an integer >= 2"),
    ],
)
def test_check_int_names_the_argument(value, least, message):
    with pytest.raises(ValueError, match=message):
        check_int("n", value, least=least)
    assert check_int("n", 3, least=least) == 3
