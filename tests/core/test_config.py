import pytest

from duquant_serve.core.config import FORMAT_VERSION, ConfigError, DuQuantConfig


def test_round_trip_writes_the_current_version():
    c = DuQuantConfig(tp_shards=4, block_size=64)
    d = c.to_dict()
    assert d["format_version"] == FORMAT_VERSION == 5 and d["quant_method"] == "duquant"
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


@pytest.mark.parametrize("size, tp_shards, width, row_parallel, want", [
    (0, 1, 576, False, 1), (0, 2, 512, True, 2), (0, 2, 512, False, 1),
    (128, 1, 576, False, 9),  # SmolLM2 hidden: 576 = 9 × 64, the widest power of two
    (128, 1, 1536, True, 12),  # SmolLM2 down_proj: 12 × 128
    (64, 2, 384, True, 6),  # 2 shards of 192 → 3 groups of 64 each
    (128, 2, 384, False, 3),  # column-parallel inputs ignore tp_shards: 3 × 128
])
def test_activation_groups(size, tp_shards, width, row_parallel, want):
    c = DuQuantConfig(act_group_size=size, tp_shards=tp_shards)
    assert c.activation_groups(width, row_parallel) == want


def test_activation_groups_refuses_impossible_widths():
    with pytest.raises(ConfigError, match="no activation group between 8 and 16"):
        DuQuantConfig(act_group_size=16).activation_groups(12, False)
    with pytest.raises(ConfigError, match="cannot be split into 2"):
        DuQuantConfig(tp_shards=2).activation_groups(7, True)


@pytest.mark.parametrize("size", [4, 48, -64, 1.5, "128"])
def test_act_group_size_is_validated(size):
    with pytest.raises(ConfigError, match="act_group_size"):
        DuQuantConfig.from_dict(DuQuantConfig().to_dict() | {"act_group_size": size})


def test_act_group_size_is_a_version_5_field():
    d = DuQuantConfig().to_dict() | {"format_version": 4}
    assert DuQuantConfig.from_dict(d).act_group_size == 0  # what version 4 meant
    del d["act_group_size"]
    assert DuQuantConfig.from_dict(d).act_group_size == 0  # absent: 0
    with pytest.raises(ConfigError, match="needs format_version 5"):
        DuQuantConfig.from_dict(d | {"act_group_size": 64})
