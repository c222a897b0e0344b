import os

import pytest

# Tests are small; more threads than cores only adds contention on 2-core CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")

from offline_quant.calibration import CALIB_TEXTS


@pytest.fixture(scope="session")
def wikitext_valid(tmp_path_factory) -> str:
    """A 24 KB slice of WikiText-2 validation text (tiny models use a byte-level tokenizer, so
    the whole file would cost seconds of tokenization per use)."""
    p = CALIB_TEXTS["wikitext2"]  # shipped with the project: never skipped for lack of data
    out = tmp_path_factory.mktemp("data") / "valid_slice.txt"
    with open(p, encoding="utf-8") as f:
        out.write_text(f.read(24_000), encoding="utf-8")
    return str(out)




@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A float32 tiny Llama and its DuQuant checkpoint (tp_shards=2), one activation range per
    input (shard): the layout every format version can state, so tests rewrite it as older
    formats. The default's activation groups have their own end-to-end tests."""
    from duquant_serve.cli import main
    from duquant_serve.testing.tiny import QUICK_QUANT_ARGS as QUICK_QUANT
    from duquant_serve.testing.tiny import make_tiny_model

    d = tmp_path_factory.mktemp("tiny")
    src = make_tiny_model(d / "llama", "llama")
    out = d / "llama-dq"
    assert main(["-q", "quantize", str(src), "--out", str(out), "--tp-shards", "2",
                 "--act-group-size", "0", *QUICK_QUANT]) == 0
    return src, out


def pytest_collection_modifyitems(config, items):
    """Skip (never silently deselect) slow tests unless DUQUANT_RUN_SLOW=1, and GPU tests where
    there is no CUDA device; the reason shows in pytest's summary (-ra)."""
    run_slow = os.environ.get("DUQUANT_RUN_SLOW") == "1"
    has_cuda = None
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow test: set DUQUANT_RUN_SLOW=1 to run it"))
        if "gpu" in item.keywords:
            if has_cuda is None:
                import torch

                has_cuda = torch.cuda.is_available()
            if not has_cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)"))
