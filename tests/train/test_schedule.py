import math

import pytest

from pocketlm.errors import UserError
from pocketlm.train.loop import parse_duration
from pocketlm.train.schedule import lr_at


def test_warmup_is_linear_then_cosine_reaches_min():
    kw = dict(lr=1e-3, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(0, 0.0, **kw) == pytest.approx(1e-4)
    assert lr_at(9, 0.09, **kw) == pytest.approx(1e-3)
    assert lr_at(10, 0.0, **kw) == pytest.approx(1e-3)
    assert lr_at(50, 0.5, **kw) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert lr_at(100, 1.0, **kw) == pytest.approx(1e-4)


def test_wsd_is_flat_then_decays_linearly():
    kw = dict(lr=2e-3, warmup_steps=0, schedule="wsd", min_lr_ratio=0.0, decay_fraction=0.2)
    assert lr_at(10, 0.5, **kw) == pytest.approx(2e-3)
    assert lr_at(10, 0.8, **kw) == pytest.approx(2e-3)
    assert lr_at(10, 0.9, **kw) == pytest.approx(1e-3)
    assert lr_at(10, 1.0, **kw) == pytest.approx(0.0)


def test_parse_duration():
    assert parse_duration("90") == 90
    assert parse_duration("10m") == 600
    assert parse_duration("1.5h") == 5400
    assert parse_duration(None) is None
    with pytest.raises(UserError, match="max-time"):
        parse_duration("ten minutes")
    assert math.isclose(parse_duration("30s"), 30)
