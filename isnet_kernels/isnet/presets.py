"""Named sets of ISNet settings: ``"default"`` (what trains best across data sets) and ``"paper"`` (the authors').

``ISNet(model, preset=...)`` and ``TrainConfig(preset=...)`` take every setting a preset governs from the preset
unless it is passed explicitly. The two differ in (docs/isnet.md#defaults for the study behind them):

================  ===========================================  ============================================
setting           ``"default"``                                ``"paper"`` (Bassi et al., reference code)
================  ===========================================  ============================================
select            ``"label"``: the image's label class           ``"lowest"`` logit
batch_stats       ``"live"``: BatchNorm statistics keep their    ``"detached"``: constants in the heatmap's
                  gradient in the heatmap's graph                gradient
deep_supervision  ``"auto"``: the default layers when the        ``False``: the input heatmap only
                  model has them (:func:`default_supervision`)
first_layer       ``"epsilon"``                                  ``"zb"`` (Z^B)
C2 (the loss)     1000: in effect no upper bound on the          25
                  foreground relevance
lr (trainer)      0.15                                           0.01
lr_schedule       ``"cosine"``                                   ``"constant"``
================  ===========================================  ============================================

The heatmap loss's other constants (P = 0.7, d = 0.9, E = 1, A = 1, B = 3, C1 = 1, hybrid foreground term) are the
authors' in both. The foreground term's upper bound ``C2`` caps the total relevance inside the mask, which is the
label's logit under the logit rule: at 25 it capped the classifier's margin, so that on images whose whole
background predicts the class the margin it still needed came from the background (docs/isnet.md, section "C2:
when the whole background is the shortcut"). The default preset lifts it; the paper preset keeps the authors'
value.
"""

from __future__ import annotations

from typing import Any

from ..errors import InputError

#: The ISNet settings each preset gives (:class:`~isnet_kernels.ISNet` arguments).
ISNET_PRESETS: dict[str, dict[str, Any]] = {
    "default": {"select": "label", "batch_stats": "live", "deep_supervision": "auto", "first_layer": "epsilon"},
    "paper": {"select": "lowest", "batch_stats": "detached", "deep_supervision": False, "first_layer": "zb"},
}
#: The heatmap loss's settings each preset gives (:class:`~isnet_kernels.ISNetLoss` arguments).
LOSS_PRESETS: dict[str, dict[str, Any]] = {"default": {"C2": 1000.0}, "paper": {"C2": 25.0}}
#: What the trainer takes from a preset (:class:`~isnet_kernels.train.TrainConfig` fields): both of the above, the
#: learning rate and its schedule.
TRAINER_PRESETS: dict[str, dict[str, Any]] = {
    "default": {**ISNET_PRESETS["default"], **LOSS_PRESETS["default"], "lr": 0.15, "lr_schedule": "cosine"},
    "paper": {**ISNET_PRESETS["paper"], **LOSS_PRESETS["paper"], "lr": 0.01, "lr_schedule": "constant"},
}
PRESETS = tuple(ISNET_PRESETS)


def check_preset(preset: str) -> str:
    if preset not in ISNET_PRESETS:
        raise InputError(f"preset must be one of {PRESETS}, got {preset!r}")
    return preset


def preset_value(preset: str, name: str, value: Any = None, table: dict[str, dict[str, Any]] = ISNET_PRESETS) -> Any:
    """``value`` if given (not None), else the preset's value of setting ``name``."""
    return table[check_preset(preset)][name] if value is None else value
