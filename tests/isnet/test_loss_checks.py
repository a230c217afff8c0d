"""The loss's constants: the foreground band [C1, C2] must not be empty (C1 <= C2), per map and per level."""

from __future__ import annotations

import pytest

import isnet_kernels as ik
from isnet_kernels.errors import InputError
from isnet_kernels.train import TrainConfig, TrainError


@pytest.mark.parametrize("C1,C2", [(100.0, 1.0), ((1.0, 30.0), 25.0), (2.0, (25.0, 1.0)),
                                   ({"input": 1.0, "layer1": 9.0}, {"input": 25.0, "layer1": 3.0}),
                                   ({"input": 30.0}, 25.0)])
def test_c1_above_c2_is_refused(C1: object, C2: object) -> None:
    with pytest.raises(InputError, match="C1 must not exceed C2") as info:
        ik.ISNetLoss(C1=C1, C2=C2)
    assert info.value.params == ("C1", "C2")


@pytest.mark.parametrize("C1,C2", [(1.0, 25.0), (3.0, 3.0), ((1.0, 2.0), (25.0, 30.0)), (1.0, (2.0, 3.0)),
                                   ({"input": 1.0, "layer1": 2.0}, {"input": 25.0, "layer1": 2.0})])
def test_a_band_of_c1_at_most_c2_is_accepted(C1: object, C2: object) -> None:
    ik.ISNetLoss(C1=C1, C2=C2)


def test_per_map_values_of_different_lengths_are_refused() -> None:
    with pytest.raises(InputError, match="one per map"):
        ik.ISNetLoss(C1=(1.0, 2.0), C2=(25.0, 26.0, 27.0))


def test_train_config_refuses_c1_above_c2_and_eps_zero() -> None:
    with pytest.raises(TrainError, match="C1 must not exceed C2") as info:
        TrainConfig(data="d", out="r", C1=100.0, C2=1.0)
    assert info.value.params == ("C1", "C2")
    with pytest.raises(TrainError, match="eps must be a positive number") as info:
        TrainConfig(data="d", out="r", eps=0.0)
    assert info.value.params == ("eps",)
