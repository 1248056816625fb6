"""The restorer model: config and presets, priors, the network, tiled inference, the summary."""

from restore.model.config import PRESETS, RestorerConfig, base, preset, small, tiny
from restore.model.priors import PRIOR_NAMES, Priors, drop_priors
from restore.model.restorer import Restorer, count_parameters
from restore.model.tiling import restore_tiled

__all__ = [
    "PRESETS",
    "PRIOR_NAMES",
    "Priors",
    "Restorer",
    "RestorerConfig",
    "base",
    "count_parameters",
    "drop_priors",
    "preset",
    "restore_tiled",
    "small",
    "tiny",
]
