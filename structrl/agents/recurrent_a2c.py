"""Recurrent A2C: sb3-contrib's RecurrentPPO configured so that its update is exactly A2C's."""

from __future__ import annotations

from typing import Any

import torch as th
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from structrl.agents.recurrent_ppo import RecurrentPPO


class RecurrentA2C(RecurrentPPO):
    """
    Advantage actor-critic for recurrent policies (LSTM or RIM), built on sb3-contrib's recurrent machinery.

    One pass over the rollout as a single minibatch (``n_epochs=1``, ``batch_size = n_steps * n_envs``),
    ``gae_lambda=1`` (n-step returns), no advantage normalisation and RMSprop. At the only gradient step the
    new policy is the one that collected the rollout, so PPO's ratio is exactly 1, the clipping never binds
    and the gradient of the clipped surrogate is A2C's ``A * grad log pi``: the update is A2C's. The defaults
    are SB3 A2C's, except ``n_steps=16``, which gives the recurrent memory longer truncated-BPTT windows.

    :param policy: The policy class or name (``"MlpLstmPolicy"``, :class:`structrl.policies.RIMPolicy`...).
    :param env: The environment or its id.
    :param learning_rate: Learning rate (constant or schedule).
    :param n_steps: Steps per env per update.
    :param gamma: Discount factor.
    :param gae_lambda: GAE lambda; 1.0 gives A2C's n-step returns.
    :param ent_coef: Entropy coefficient.
    :param vf_coef: Value-loss coefficient.
    :param max_grad_norm: Gradient-norm clipping.
    :param rms_prop_eps: RMSprop epsilon (used when ``use_rms_prop``).
    :param use_rms_prop: Use RMSprop (A2C's optimiser) unless ``policy_kwargs`` names an optimiser.
    :param normalize_advantage: Normalise advantages (off in A2C).
    :param n_epochs: Must be 1 (accepted so that RecurrentPPO-style hyperparameter files load).
    :param batch_size: Must be ``None`` or ``n_steps * n_envs``.
    :param policy_kwargs: Policy keyword arguments.
    :param kwargs: Other :class:`sb3_contrib.RecurrentPPO` arguments (seed, verbose, tensorboard_log...).
    """

    def __init__(
        self,
        policy: str | type[RecurrentActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 7e-4,
        n_steps: int = 16,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        rms_prop_eps: float = 1e-5,
        use_rms_prop: bool = True,
        normalize_advantage: bool = False,
        n_epochs: int = 1,
        batch_size: int | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        _init_setup_model: bool = True,
        **kwargs: Any,
    ) -> None:
        if n_epochs != 1:
            raise ValueError(
                f"RecurrentA2C makes one pass over each rollout: n_epochs must be 1, got {n_epochs}"
            )
        if kwargs.get("update_rule", "sb3") != "sb3":
            raise ValueError(
                f"RecurrentA2C makes A2C's update; update_rule={kwargs['update_rule']!r} is a PPO update: "
                "leave update_rule out or train with RecurrentPPO"
            )
        policy_kwargs = dict(policy_kwargs or {})
        if use_rms_prop and "optimizer_class" not in policy_kwargs:
            policy_kwargs["optimizer_class"] = th.optim.RMSprop
            policy_kwargs["optimizer_kwargs"] = dict(alpha=0.99, eps=rms_prop_eps, weight_decay=0)
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=batch_size,
            n_epochs=1,
            gamma=gamma,
            gae_lambda=gae_lambda,
            normalize_advantage=normalize_advantage,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            policy_kwargs=policy_kwargs,
            _init_setup_model=False,
            **kwargs,
        )
        if self.env is not None:  # ``load`` builds the object without an env, then restores batch_size
            rollout_size = self.n_steps * self.n_envs
            if batch_size is not None and batch_size != rollout_size:
                raise ValueError(
                    "RecurrentA2C uses the whole rollout as one batch: batch_size must be n_steps * n_envs = "
                    f"{self.n_steps} * {self.n_envs} = {rollout_size} (or left out), got {batch_size}"
                )
            self.batch_size = rollout_size
        if _init_setup_model:
            self._setup_model()
