import pytest

from pgolf.model.patterns import parse_layers


@pytest.mark.parametrize("pattern, expected", [
    ("none", []), ("", []), ("all", [0, 1, 2, 3, 4, 5]), ("last:2", [4, 5]), ("first:3", [0, 1, 2]),
    ("from:4", [4, 5]), ("1-3", [1, 2, 3]), ("0,2,5", [0, 2, 5]), ("1-2,5", [1, 2, 5]), ("LAST:6", list(range(6))),
])
def test_patterns(pattern, expected):
    got = parse_layers(pattern, 6)
    assert [i for i, on in enumerate(got) if on] == expected


@pytest.mark.parametrize("pattern", ["last:7", "from:6", "0,6", "3-1", "every:2", "x", "-1"])
def test_bad_patterns_name_the_field(pattern):
    with pytest.raises(ValueError, match="model.xsa_layers"):
        parse_layers(pattern, 6, field="model.xsa_layers")
