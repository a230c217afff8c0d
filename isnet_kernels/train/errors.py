"""The training product's exception: bad settings, a missing run or checkpoint, a data set that does not fit."""

from ..errors import ISNetError


class TrainError(ISNetError, ValueError):
    """A training, evaluation or explanation request that cannot run as given.

    The message names the problem and the fix (the flag to pass, the file to create, the run to resume).
    """
