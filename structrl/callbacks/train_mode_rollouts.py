"""Collect rollouts with the policy in training mode, as torch_ac (the RIM seed's RL library) does."""

from __future__ import annotations

from stable_baselines3.common.callbacks import BaseCallback


class TrainModeRolloutsCallback(BaseCallback):
    """
    Keep the policy in training mode while it collects experience, so dropout acts on the actions it samples.

    Stable-Baselines3 collects rollouts in eval mode and updates in train mode. torch_ac never leaves train
    mode, so the RIM seed's agents acted with their attention dropout (0.1) on, and PPO's old
    log-probabilities came from other dropout masks than the update's. This callback reproduces that, for
    comparisons with the seed: give the RIM dropout (``rim_kwargs=dict(input_dropout=0.1, comm_dropout=0.1)``)
    and add the callback, in Python or as a zoo entry's ``callback:``.

    Put it after any callback that evaluates the agent during training: evaluation switches the policy to eval
    mode, and this callback switches it back at its next call. ``predict`` and evaluation after training are
    unaffected (they set eval mode themselves).

    :param verbose: Verbosity level.
    """

    def _train_mode(self) -> None:
        if not self.model.policy.training:
            self.model.policy.set_training_mode(True)

    def _on_rollout_start(self) -> None:
        self._train_mode()

    def _on_step(self) -> bool:
        self._train_mode()
        return True
