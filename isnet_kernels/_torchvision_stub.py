"""Stand-in ``torchvision`` modules for importing zennit beside a torch that PyPI's torchvision does not fit.

zennit imports ``torchvision.models.resnet`` at import time, only for its ``BasicBlock`` and ``Bottleneck``
classes (its ResNet canonizers match them). The stand-ins hold the model zoo's torchvision-compatible blocks, so
those canonizers apply to :mod:`isnet_kernels.models.resnet`. Used by the tests and benchmarks.
"""

from __future__ import annotations

import sys
import types


def install_torchvision_stub() -> bool:
    """Put the stand-ins in ``sys.modules`` unless a working torchvision (or a stand-in) is there.

    Returns whether the stand-ins are in use.
    """
    if "torchvision.models.resnet" in sys.modules:
        return getattr(sys.modules["torchvision"], "__isnet_kernels_stub__", False)
    try:
        import torchvision.models.resnet  # noqa: F401

        return False
    except Exception:  # not installed, or built for another torch
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    from .models.resnet import BasicBlock, Bottleneck

    tv = types.ModuleType("torchvision")
    tv.__dict__["__isnet_kernels_stub__"] = True
    models = types.ModuleType("torchvision.models")
    resnet = types.ModuleType("torchvision.models.resnet")
    resnet.BasicBlock, resnet.Bottleneck = BasicBlock, Bottleneck
    models.resnet, tv.models = resnet, models
    sys.modules.update({"torchvision": tv, "torchvision.models": models, "torchvision.models.resnet": resnet})
    return True
