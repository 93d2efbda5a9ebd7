"""--fail-on conditions (experiments/_fail_on.py)."""

import pytest

from prefdyn.errors import PrefdynError
from prefdyn.experiments._fail_on import crossed, parse_fail_on


def test_crossed_exactly_when_the_threshold_is_crossed():
    conditions = parse_fail_on("ches_share>0.2, starved_concepts>=1,problems<3")
    assert [str(c) for c in conditions] == ["ches_share>0.2", "starved_concepts>=1", "problems<3"]
    metrics = {"ches_share": 0.2, "starved_concepts": 0.0, "problems": 3.0}
    assert crossed(conditions, metrics) == []
    metrics = {"ches_share": 0.2001, "starved_concepts": 1.0, "problems": 2.0}
    assert crossed(conditions, metrics) == ["ches_share = 0.2001 > 0.2", "starved_concepts = 1 >= 1",
                                            "problems = 2 < 3"]


def test_bad_conditions_are_one_line_errors():
    assert parse_fail_on(None) == [] and parse_fail_on("") == []
    with pytest.raises(PrefdynError, match="unknown metric 'ches'"):
        parse_fail_on("ches>0")
    with pytest.raises(PrefdynError, match="expected METRIC>VALUE"):
        parse_fail_on("ches_share=0.2")
    with pytest.raises(PrefdynError, match="zero_std_share was not computed"):
        crossed(parse_fail_on("zero_std_share>0"), {"zero_std_share": None})
