import pytest

from duquant_serve.core.config import FORMAT_VERSION, ConfigError, DuQuantConfig


def test_round_trip_writes_the_current_version():
    c = DuQuantConfig(tp_shards=4, block_size=64)
    d = c.to_dict()
    assert d["format_version"] == FORMAT_VERSION == 2 and d["quant_method"] == "duquant"
    assert DuQuantConfig.from_dict(d) == c


def test_version_1_is_read_where_it_means_the_same():
    d = DuQuantConfig().to_dict() | {"format_version": 1}
    assert DuQuantConfig.from_dict(d).format_version == 1  # tp_shards 1: unchanged semantics
    with pytest.raises(ConfigError, match="re-quantize"):
        DuQuantConfig.from_dict(d | {"tp_shards": 2})
