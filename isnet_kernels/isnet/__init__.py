"""The ISNet: the wrapper that chooses what to explain, its presets, the heatmap loss, C1/C2 tuning, deep
supervision, and the RRR baseline."""

from .baselines import RRRLoss, RRRLossOutput
from .loss import ISNetLoss, ISNetLossOutput, gwrp, heatmap_loss
from .output import ISNetOutput
from .presets import ISNET_PRESETS, PRESETS, TRAINER_PRESETS
from .tune import CutResult, CutTuner, tune_cut
from .wrapper import ISNet, default_supervision

__all__ = ["ISNET_PRESETS", "PRESETS", "TRAINER_PRESETS", "CutResult", "CutTuner", "ISNet", "ISNetLoss",
           "ISNetLossOutput", "ISNetOutput", "RRRLoss", "RRRLossOutput", "default_supervision", "gwrp", "heatmap_loss",
           "tune_cut"]
