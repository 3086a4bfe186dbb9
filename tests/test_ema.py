"""The EMA of the denoiser's weights: the update rule and the decay's warm-up, in closed form."""
from __future__ import annotations

import pytest
import torch

from model.ema import ema_decay_at, ema_update


def test_ema_update_rule():
    """ema ← d·ema + (1 − d)·net, checked on a 1-parameter module."""
    net, ema = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    net.weight.data.fill_(1.0)
    ema.weight.data.fill_(0.0)
    ema_update(ema, net, decay=0.9)
    assert ema.weight.item() == pytest.approx(0.1)
    ema_update(ema, net, decay=0.9)
    assert ema.weight.item() == pytest.approx(0.19)


def test_the_decay_warms_up_as_one_plus_n_over_ten_plus_n_then_holds():
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)  # the first steps follow the network closely
    assert ema_decay_at(760, 0.999) == pytest.approx(761 / 770)  # the digits demo's last step: below 0.999
    assert ema_decay_at(9000, 0.999) == 0.999 and ema_decay_at(100_000, 0.999) == 0.999  # (1+n)/(10+n) >= d
