import pytest

from duquant_serve.core.config import FORMAT_VERSION, ConfigError, DuQuantConfig


def test_round_trip_writes_the_current_version():
    c = DuQuantConfig(tp_shards=4, block_size=64)
    d = c.to_dict()
    assert d["format_version"] == FORMAT_VERSION == 4 and d["quant_method"] == "duquant"
    assert d["method"] == "duquant"
    assert DuQuantConfig.from_dict(d) == c


def test_version_1_is_read_where_it_means_the_same():
    d = DuQuantConfig().to_dict() | {"format_version": 1}
    del d["method"]  # format 3's key
    assert DuQuantConfig.from_dict(d).format_version == 1  # tp_shards 1: unchanged semantics
    with pytest.raises(ConfigError, match="re-quantize"):
        DuQuantConfig.from_dict(d | {"tp_shards": 2})


def test_version_2_has_no_method_key_and_gets_the_one_lwc_implies():
    d = DuQuantConfig().to_dict() | {"format_version": 2}
    del d["method"]
    assert DuQuantConfig.from_dict(d).method == "duquant"
    assert DuQuantConfig.from_dict(d | {"lwc": True}).method == "duquant-lwc"
    with pytest.raises(ConfigError, match="format_version 2 does not define"):
        DuQuantConfig.from_dict(d | {"method": "duquant-opt"})


@pytest.mark.parametrize("change, fragment", [
    ({"method": "gptq-magic"}, "method must be one of"),
    ({"method": "duquant-lwc"}, "contradicts"),  # lwc stays False
    ({"lwc": True}, "contradicts"),  # method stays duquant
])
def test_method_is_validated(change, fragment):
    d = DuQuantConfig().to_dict() | change
    with pytest.raises(ConfigError, match=fragment):
        DuQuantConfig.from_dict(d)


def test_the_pipeline_implements_exactly_the_recorded_methods():
    from duquant_serve.core.config import METHODS
    from offline_quant.pipeline import METHOD_TABLE

    assert tuple(METHOD_TABLE) == METHODS
