"""The error of the contrastive world models: bad settings, datasets or model files."""


class WorldModelError(ValueError):
    """
    A setting, dataset or model file a world model cannot use; the message names the problem and the fix.
    """
