"""Shipped texts: `wikitext2` names resolve inside the repository, with disjoint splits."""

import hashlib

import pytest

from offline_quant.calibration import (
    CALIB_TEXTS,
    EVAL_TEXTS,
    CalibrationError,
    calib_text_path,
    eval_text_path,
    read_text,
)

# sha256 of the files as distributed (offline_quant/data/wikitext2/README.md).
TEST_RAW_SHA = "4f3e427e4aff23acff917a8a51aeae21bf12832256e26914c8fc250dcef4103c"


def test_wikitext2_names_resolve_to_shipped_disjoint_splits():
    test, valid = eval_text_path("wikitext2"), calib_text_path("wikitext2")
    assert test == EVAL_TEXTS["wikitext2"] and valid == CALIB_TEXTS["wikitext2"]
    assert test.is_file() and valid.is_file() and test != valid
    assert (test.parent / "README.md").read_text().count("CC BY-SA 3.0") >= 1
    raw = (test.parent / "test.raw").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == TEST_RAW_SHA
    # Calibration text must not contain the evaluation text: no long test paragraph in valid.
    valid_text = read_text(valid)
    paragraphs = [p for p in read_text(test).split("\n\n") if len(p) > 400][:50]
    assert paragraphs and not any(p[:200] in valid_text for p in paragraphs)


def test_unknown_name_or_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CalibrationError, match="shipped texts: wikitext2"):
        read_text(calib_text_path(str(tmp_path / "nope.txt")))
