"""Log how often each RIM unit is active while the agent collects experience."""

from __future__ import annotations

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback

from structrl.policies.rim_policy import RIMCore


class RIMActivationCallback(BaseCallback):
    """
    Log ``rim/unit_<i>_active``: the fraction of rollout steps (over envs) in which unit ``i`` of the actor's
    RIM was among the Ka active units, once per rollout. A unit that is never active is a wasted module; one
    that is always active does all the work.

    The fractions of the last rollout are kept in :attr:`last_frequencies` (they sum to Ka).

    :param verbose: Verbosity level.
    """

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self._counts: th.Tensor | None = None
        self._samples = 0
        self.last_frequencies: np.ndarray | None = None

    def _actor_core(self) -> RIMCore:
        core = getattr(self.model.policy, "lstm_actor", None)
        assert isinstance(core, RIMCore), (
            "RIMActivationCallback needs a policy whose memory is a RIM (structrl.policies.RIMPolicy), "
            f"got {type(self.model.policy).__name__}"
        )
        return core

    def _init_callback(self) -> None:
        self._actor_core()

    def _on_rollout_start(self) -> None:
        self._counts, self._samples = None, 0

    def _on_step(self) -> bool:
        masks = self._actor_core().last_masks  # (T, layers*directions, batch, units)
        if masks is not None:
            per_unit = masks.reshape(-1, masks.shape[-1]).sum(dim=0)
            self._counts = per_unit if self._counts is None else self._counts + per_unit
            self._samples += masks.shape[0] * masks.shape[1] * masks.shape[2]
        return True

    def _on_rollout_end(self) -> None:
        if self._counts is None or self._samples == 0:
            return
        self.last_frequencies = (self._counts.float() / self._samples).cpu().numpy()
        for unit, frequency in enumerate(self.last_frequencies):
            self.logger.record(f"rim/unit_{unit}_active", float(frequency))
