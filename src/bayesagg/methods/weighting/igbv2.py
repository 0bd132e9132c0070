"""IGBv2: improvable-gap balancing with task weights chosen by a soft actor-critic agent."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayesagg.distributed import all_reduce_mean, resolve_group
from bayesagg.methods.base import check_losses
from bayesagg.methods.weighting._common import (
    check_positive,
    check_probability,
    clone_or_none,
)
from bayesagg.methods.weighting.loss_weighting import LossWeighting

__all__ = ["IGBv2"]


def _mlp(sizes: Sequence[int], out_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or out_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class _Actor(nn.Module):
    """Gaussian policy over pre-softmax scores u; the action is ``K softmax(u)``."""

    def __init__(self, num_tasks: int, hidden: Sequence[int]) -> None:
        super().__init__()
        # The reference code ends the trunk with a ReLU too; kept for fidelity.
        self.trunk = _mlp([num_tasks, *hidden], out_activation=True)
        self.mu = nn.Linear(hidden[-1], num_tasks)
        self.log_std = nn.Linear(hidden[-1], num_tasks)

    def forward(self, state: Tensor) -> tuple[Tensor, Tensor]:
        h = self.trunk(state)
        return self.mu(h), self.log_std(h).clamp(-20.0, 2.0)


class _TwinCritic(nn.Module):
    """Two Q networks Q(s, a) (clipped double-Q, Fujimoto et al. 2018 / Haarnoja et al. 2018)."""

    def __init__(self, num_tasks: int, hidden: Sequence[int]) -> None:
        super().__init__()
        sizes = [2 * num_tasks, *hidden, 1]
        self.q1 = _mlp(sizes, out_activation=False)
        self.q2 = _mlp(sizes, out_activation=False)

    def forward(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        sa = torch.cat([state, action], dim=1)
        return self.q1(sa), self.q2(sa)


class IGBv2(LossWeighting):
    """IGBv2: gradient of ``sum_k w_k log L_k``, ``w`` from a soft actor-critic policy.

    Dai, Fei & Lu 2023, "Improvable Gap Balancing for Multi-Task Learning" (UAI; arXiv
    2307.15429), the deep-RL algorithm IGBv2. The paper casts loss weighting as a
    reinforcement-learning problem; where it leaves details open they are taken from the
    authors' public code (github.com/YanqiDai/IGB4MTL):

    - state ``s_t``: the batch's task losses ``L(t)`` (detached, raw);
    - action ``w_t = K softmax(u)``, ``u ~ N(mu(s_t), sigma(s_t)^2)`` from the SAC actor;
    - reward ``r_t = min_k (L_k(t) - L_k(t+1)) / L_k^base`` (the smallest normalised decrease of
      the improvable gaps between consecutive steps), ``L^base`` = mean training losses of epoch
      ``base_epoch`` (0-indexed), given to :meth:`end_epoch`;
    - the model is trained on the log losses, ``sum_k w_k log L_k`` (IGB builds on SI), so every
      loss must be > 0.

    Schedule (the official code's defaults, counted in epochs through :meth:`end_epoch`):
    random weights ``K softmax(N(0, I))`` (RLW) during the first ``random_epochs = 5`` epochs;
    transitions are stored from the step after ``L^base`` is known (``base_epoch = 1``); from
    epoch ``update_after_epochs = 3`` on, every ``update_every = 50`` steps the agent does
    ``int(update_every k / 2)`` SAC updates on mini-batches of ``int(batch_size k / 2)``
    transitions, ``k = 1 + buffer fill fraction``. SAC (Haarnoja et al. 2018): two 128-128 ReLU
    Q networks with Polyak targets (tau 0.005), discount 0.99, Adam lr 3e-4 for actor, critics
    and temperature, temperature init 0.2 tuned to target entropy ``-K``, replay buffer 10^4.

    Uncertainty and deviation notes (implemented from the paper and checked against the
    authors' public code; where the two differ, the code's behaviour is the default):

    - ``log_prob="official"`` reproduces the code's policy log-density, that of ``u`` with the
      tanh-squashing correction ``- sum log(1 - tanh(u)^2)`` although the action is a softmax,
      not a tanh; ``"gaussian"`` uses the plain Gaussian log-density of ``u`` (the entropy of
      the pre-softmax policy). Neither is the density of ``w`` (softmax is not invertible).
    - The code multiplies the reward by ``lr_before / lr_now`` of the epoch's start, which it
      computes from the same value (always 1); ``reward_scale`` is a constant factor here.
    - No terminal flag: every transition bootstraps (as in the code).
    - Consecutive steps see different mini-batches, so the reward mixes progress and batch noise;
      that is the method as published.
    - The random streams (network initialisation, RLW phase, policy noise, replay sampling) come
      from an own generator seeded by ``seed`` (global RNG when ``None``), so runs are
      reproducible; the networks are float32 on ``device`` and move to the losses' device on
      the first step if no SAC update has happened yet.

    ``last_weights`` are ``w_t`` (sum K). Stateful: ``state_dict`` holds the networks, their
    optimisers, the replay buffer, the counters and the generator state.
    """

    name = "igbv2"
    hyperparameters = (
        "random_epochs",
        "base_epoch",
        "update_after_epochs",
        "update_every",
        "sac_lr",
        "buffer_size",
        "batch_size",
        "discount",
        "tau",
        "hidden",
        "init_temperature",
        "reward_scale",
        "log_prob",
        "seed",
    )
    # data parallelism: the agent's state and d log L need the global batch's losses
    global_losses = True

    def __init__(
        self,
        num_tasks: int,
        *,
        random_epochs: int = 5,
        base_epoch: int = 1,
        update_after_epochs: int = 3,
        update_every: int = 50,
        sac_lr: float = 3e-4,
        buffer_size: int = 10_000,
        batch_size: int = 256,
        discount: float = 0.99,
        tau: float = 0.005,
        hidden: Sequence[int] = (128, 128),
        init_temperature: float = 0.2,
        reward_scale: float = 1.0,
        log_prob: Literal["official", "gaussian"] = "official",
        seed: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(num_tasks)
        for label, value, low in [
            ("random_epochs", random_epochs, 0),
            ("base_epoch", base_epoch, 0),
            ("update_after_epochs", update_after_epochs, 0),
            ("update_every", update_every, 1),
            ("buffer_size", buffer_size, 1),
            ("batch_size", batch_size, 1),
        ]:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"igbv2: {label} must be an int >= {low}, got {value!r}")
        if not (sac_lr > 0 and math.isfinite(sac_lr)):
            raise ValueError(f"igbv2: sac_lr must be finite and > 0, got {sac_lr}")
        check_probability(discount, "discount", self.name)
        check_probability(tau, "tau", self.name, closed=True)
        hidden = tuple(hidden)
        if not hidden or any(
            isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden
        ):
            raise ValueError(
                f"igbv2: hidden must be a non-empty sequence of ints >= 1, got {hidden}"
            )
        if not (init_temperature > 0 and math.isfinite(init_temperature)):
            raise ValueError(
                f"igbv2: init_temperature must be finite and > 0, got {init_temperature}"
            )
        if not (reward_scale > 0 and math.isfinite(reward_scale)):
            raise ValueError(f"igbv2: reward_scale must be finite and > 0, got {reward_scale}")
        if log_prob not in ("official", "gaussian"):
            raise ValueError(f"igbv2: log_prob must be 'official' or 'gaussian', got {log_prob!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"igbv2: seed must be an int or None, got {seed!r}")
        self.random_epochs, self.base_epoch = random_epochs, base_epoch
        self.update_after_epochs, self.update_every = update_after_epochs, update_every
        self.sac_lr, self.buffer_size, self.batch_size = float(sac_lr), buffer_size, batch_size
        self.discount, self.tau, self.hidden = float(discount), float(tau), hidden
        self.init_temperature, self.reward_scale = float(init_temperature), float(reward_scale)
        self.log_prob, self.seed = log_prob, seed
        self.device = torch.device(device)
        self.reset()

    # ----------------------------------------------------------------------------- state
    def reset(self) -> None:
        """Fresh agent (networks re-initialised from ``seed``), empty buffer, counters at 0."""
        self._generator = None if self.seed is None else torch.Generator().manual_seed(self.seed)
        K = self.num_tasks
        with torch.random.fork_rng(devices=[]):
            if self._generator is not None:
                torch.manual_seed(int(torch.randint(2**62, (1,), generator=self._generator)))
            self.actor = _Actor(K, self.hidden)
            self.critic = _TwinCritic(K, self.hidden)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_temperature = torch.tensor(math.log(self.init_temperature), requires_grad=True)
        self._to(self.device)
        self.epoch = 0  # completed epochs
        self.step = 0  # backward calls
        self.sac_updates = 0
        self.base_losses: Tensor | None = None
        self._prev_state: Tensor | None = None  # L(t-1), float32 on device
        self._prev_action: Tensor | None = None  # w(t-1)
        self._buffer = {
            "state": torch.zeros(self.buffer_size, K),
            "action": torch.zeros(self.buffer_size, K),
            "reward": torch.zeros(self.buffer_size, 1),
            "next_state": torch.zeros(self.buffer_size, K),
        }
        self._ptr = 0
        self._size = 0
        self.last_weights = None

    def _to(self, device: torch.device) -> None:
        self.device = device
        self.actor.to(device)
        self.critic.to(device)
        self.critic_target.to(device)
        self.log_temperature = self.log_temperature.detach().to(device).requires_grad_(True)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=self.sac_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=self.sac_lr)
        self.temperature_opt = torch.optim.Adam([self.log_temperature], lr=self.sac_lr)

    @property
    def temperature(self) -> float:
        """Return the current SAC entropy temperature ``exp(log_temperature)``."""
        return float(self.log_temperature.detach().exp())

    @property
    def buffer_fill(self) -> int:
        """Return the number of stored transitions."""
        return self._size

    def transition(self, index: int) -> dict[str, Tensor]:
        """Return stored transition ``index`` (0 = oldest still held) as a dict of tensors."""
        if not 0 <= index < self._size:
            raise IndexError(f"igbv2: transition {index} not in a buffer of {self._size}")
        start = self._ptr - self._size
        i = (start + index) % self.buffer_size
        return {key: value[i].clone() for key, value in self._buffer.items()}

    # ----------------------------------------------------------------------------- policy
    def _normal(self, shape: tuple[int, ...]) -> Tensor:
        return torch.randn(shape, generator=self._generator).to(self.device)

    def _policy(self, state: Tensor, *, stochastic: bool = True) -> tuple[Tensor, Tensor]:
        """Return the action ``K softmax(u)`` and its log-density term for a batch of states."""
        mu, log_std = self.actor(state)
        std = log_std.exp()
        u = mu + std * self._normal(tuple(mu.shape)) if stochastic else mu
        action = self.num_tasks * torch.softmax(u, dim=-1)
        # Gaussian log-density of u, computed from the noise to keep the graph short.
        logp = (-((u - mu) ** 2) / (2 * std**2) - log_std - 0.5 * math.log(2 * math.pi)).sum(
            dim=1, keepdim=True
        )
        if self.log_prob == "official":
            # log(1 - tanh(u)^2) written stably, as in the reference SAC code.
            logp = logp - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(dim=1, keepdim=True)
        return action, logp

    def random_weights(self) -> Tensor:
        """Return RLW weights ``K softmax(z)``, ``z ~ N(0, I)`` (the warm-up phase)."""
        return self.num_tasks * torch.softmax(self._normal((self.num_tasks,)), dim=0)

    def select_weights(self, state: Tensor) -> Tensor:
        """Return the task weights for a state [K] (RLW before ``random_epochs``, else policy)."""
        if self.epoch < self.random_epochs:
            return self.random_weights()
        with torch.no_grad():
            action, _ = self._policy(state.unsqueeze(0))
        return action[0]

    # ----------------------------------------------------------------------------- SAC
    def _store(self, state: Tensor, action: Tensor, reward: float, next_state: Tensor) -> None:
        i = self._ptr
        self._buffer["state"][i] = state.cpu()
        self._buffer["action"][i] = action.cpu()
        self._buffer["reward"][i] = reward
        self._buffer["next_state"][i] = next_state.cpu()
        self._ptr = (i + 1) % self.buffer_size
        self._size = min(self._size + 1, self.buffer_size)

    def sac_update(self, batch_size: int) -> None:
        """One soft actor-critic update (critics, actor, temperature, targets) from the buffer."""
        idx = torch.randint(0, self._size, (batch_size,), generator=self._generator)
        s, a, r, s2 = (
            self._buffer[k][idx].to(self.device)
            for k in ("state", "action", "reward", "next_state")
        )
        alpha = self.log_temperature.detach().exp()
        with torch.no_grad():
            a2, logp2 = self._policy(s2)
            q1t, q2t = self.critic_target(s2, a2)
            y = r + self.discount * (torch.min(q1t, q2t) - alpha * logp2)
        q1, q2 = self.critic(s, a)
        critic_loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()

        a_new, logp = self._policy(s)
        q1n, q2n = self.critic(s, a_new)
        actor_loss = (alpha * logp - torch.min(q1n, q2n)).mean()
        actor_params = list(self.actor.parameters())
        grads = torch.autograd.grad(actor_loss, actor_params)  # the critics get no gradient
        self.actor_opt.zero_grad()
        for p, g in zip(actor_params, grads, strict=True):
            p.grad = g
        self.actor_opt.step()

        target_entropy = -float(self.num_tasks)
        temperature_loss = -(self.log_temperature * (logp.detach() + target_entropy)).mean()
        self.temperature_opt.zero_grad()
        temperature_loss.backward()
        self.temperature_opt.step()

        with torch.no_grad():
            for p, pt in zip(
                self.critic.parameters(), self.critic_target.parameters(), strict=True
            ):
                pt.mul_(1 - self.tau).add_(self.tau * p)
        self.sac_updates += 1

    # ----------------------------------------------------------------------------- hooks
    def objective(self, losses: Tensor) -> Tensor:
        """Store the last transition, train the agent on schedule, pick ``w``; ``sum w log L``."""
        check_positive(losses, self.name)
        if losses.device != self.device:
            if self.sac_updates > 0:
                raise ValueError(
                    f"igbv2: agent trained on {self.device}, losses now on {losses.device}"
                )
            self._to(losses.device)
        state = losses.detach().float()
        if self.base_losses is not None and self._prev_state is not None:
            decrease = (self._prev_state - state) / self.base_losses.to(state)
            reward = float(decrease.min()) * self.reward_scale
            self._store(self._prev_state, cast(Tensor, self._prev_action), reward, state)
        if (
            self.epoch >= self.update_after_epochs
            and self.step % self.update_every == 0
            and self._size > 0
        ):
            k = 1 + self._size / self.buffer_size
            for _ in range(int(self.update_every * k / 2)):
                self.sac_update(int(self.batch_size * k / 2))
        w = self.select_weights(state)
        self._prev_state, self._prev_action = state, w.detach().float()
        self.step += 1
        weights = w.detach().to(dtype=losses.dtype)
        self.last_weights = weights
        return (weights * losses.log()).sum()

    def end_epoch(self, losses: Tensor | None = None) -> None:
        """Count the epoch; at ``base_epoch`` keep its mean losses [K] as ``L^base``."""
        if self.epoch == self.base_epoch:
            if losses is None:
                raise ValueError(
                    f"igbv2: end_epoch of epoch {self.epoch} needs the mean task losses [K]"
                )
            base = all_reduce_mean(losses.detach(), resolve_group(self.process_group))
            base = base.float().to(self.device)
            check_losses(base, self.num_tasks)
            check_positive(base, self.name)
            self.base_losses = base
        self.epoch += 1

    def state_dict(self) -> dict[str, Any]:
        """Return everything needed to resume: networks, optimisers, buffer, counters, RNG."""
        return {
            **super().state_dict(),
            "actor": copy.deepcopy(self.actor.state_dict()),
            "critic": copy.deepcopy(self.critic.state_dict()),
            "critic_target": copy.deepcopy(self.critic_target.state_dict()),
            "log_temperature": self.log_temperature.detach().clone(),
            "actor_opt": copy.deepcopy(self.actor_opt.state_dict()),
            "critic_opt": copy.deepcopy(self.critic_opt.state_dict()),
            "temperature_opt": copy.deepcopy(self.temperature_opt.state_dict()),
            "buffer": {k: v.clone() for k, v in self._buffer.items()},
            "ptr": self._ptr,
            "size": self._size,
            "epoch": self.epoch,
            "step": self.step,
            "sac_updates": self.sac_updates,
            "base_losses": clone_or_none(self.base_losses),
            "prev_state": clone_or_none(self._prev_state),
            "prev_action": clone_or_none(self._prev_action),
            "rng_state": None if self._generator is None else self._generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state from :meth:`state_dict` (onto this object's device)."""
        super().load_state_dict(state)
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_temperature.copy_(state["log_temperature"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.temperature_opt.load_state_dict(state["temperature_opt"])
        self._buffer = {k: v.clone() for k, v in state["buffer"].items()}
        self._ptr, self._size = int(state["ptr"]), int(state["size"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.sac_updates = int(state["sac_updates"])
        dev = self.device
        self.base_losses = (
            None if state["base_losses"] is None else state["base_losses"].clone().to(dev)
        )
        self._prev_state = (
            None if state["prev_state"] is None else state["prev_state"].clone().to(dev)
        )
        self._prev_action = (
            None if state["prev_action"] is None else state["prev_action"].clone().to(dev)
        )
        if state.get("rng_state") is not None:
            if self._generator is None:
                self._generator = torch.Generator()
            self._generator.set_state(state["rng_state"])
