from __future__ import annotations

import pytest
import torch

from dlbench.interfaces import ContinuousSchedule, Method
from dlbench.registry import InterfaceError, Registry, UnknownComponentError


class Lin(ContinuousSchedule):
    def __init__(self, config):
        pass

    def logsnr(self, t):
        return 10 - 20 * t


def test_unknown_name_suggests_nearest_and_lists_known():
    r = Registry()
    for n in ("shifted-cosine", "cosine", "linear"):
        r.add("schedule", n, Lin)
    with pytest.raises(UnknownComponentError) as e:
        r.get("schedule", "shifted-cosin")
    msg = str(e.value)
    assert "unknown schedule 'shifted-cosin'" in msg
    assert "Did you mean 'shifted-cosine'" in msg
    assert "Known schedules: cosine, linear, shifted-cosine" in msg


def test_canonical_names_and_unknown_kind():
    r = Registry()
    r.add("schedule", "lin", Lin)
    assert r.get("schedule", "schedule/lin").canonical == "schedule/lin"
    with pytest.raises(UnknownComponentError, match="Did you mean 'schedule'"):
        r.get("schedules", "lin")


def test_interface_checked_at_registration():
    r = Registry()

    class NoSample(Method):
        def loss(self, tokens, labels):
            return tokens.sum(), {}

    with pytest.raises(InterfaceError, match="abstract: implement sample"):
        r.add("method", "half", NoSample)

    class Duck:  # structural: no inheritance needed, but the methods must exist
        def logsnr(self, t):
            return t

    with pytest.raises(InterfaceError, match="missing alpha_sigma"):
        r.add("schedule", "duck", Duck)
    Duck.alpha_sigma = lambda self, t: (t, t)
    with pytest.raises(InterfaceError, match="missing dlogsnr"):  # VQ-LCMD's ELBO weight needs lambda'(t)
        r.add("schedule", "duck", Duck)
    Duck.dlogsnr = lambda self, t: t
    r.add("schedule", "duck", Duck)


def test_build_passes_validated_config():
    r = Registry()
    spec = r.add("schedule", "lin", Lin)
    s = spec.build({})
    assert torch.equal(s.logsnr(torch.tensor([0.5])), torch.tensor([0.0]))
