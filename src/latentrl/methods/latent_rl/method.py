"""Latent RL: a value head scores the latent steps and the policy maximises its score (Özeren & Aßenmacher 2025).

arXiv 2512.11816, code github.com/enesozeren/latent-space-thinking-model (`src/value_model`, `src/latent_rl`).

1. A value head V (MLP hidden -> 128 -> 32 -> 8 -> 1 logit, ReLU) is pre-trained with binary cross-entropy on the
   correctness of rollouts of the SFT (Coconut / LatR) model: every latent position of a rollout is one example,
   labelled with that rollout's 0/1 correctness (`pretrain_value_head`).
2. RL: rollouts as in `coconut_grpo` (fixed thoughts, forced `<|end-latent|>`, sampled answer). One teacher-forced
   replay over prompt + stored completion gives the last hidden state h_t at each completion position; with L the
   latent positions of a completion,

       J_policy = - mean_rows mean_{t in L} sigmoid(V(h_t))          (value head frozen in this term)
       J_value  =   mean_rows mean_{t in L} BCE(V(sg[h_t]), y_row; pos_weight = 20)   (backbone frozen in this term)
       loss     =   J_policy + value_loss_coef * J_value

   There is no policy-gradient term (`policy_kind_masks` -> {}). The generated latents are detached constants:
   the policy term only changes how the backbone *reads* fixed thoughts, so it can be weak or degenerate (the
   methods spec says so; the benchmark shows it). Value-head weights are a side module saved with checkpoints.

If the starting checkpoint carries no value head (and `pretrain_value_head` was not called), the method pre-trains
one at the first step on rollouts of the first `pretrain_prompts` training prompts, so `latentrl bench` can run it
from a plain Coconut-SFT checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from latentrl.methods.base import MethodContext, register_method
from latentrl.methods.coconut_grpo import CoconutLatentMethod, coconut_components
from latentrl.methods.latent_rl.config import LatentRLConfig
from latentrl.model import LatentTokens
from latentrl.optimizer_steps import EpochOrder, OptimizerSteps
from latentrl.rewards import correctness_labels

if TYPE_CHECKING:
    from latentrl.model import LatentModel

VALUE_HEAD = "value_head"
ACCURACY_REWARDS = ("math_verify", "correctness", "hrpo")


class ValueHead(nn.Module):
    """MLP on a last hidden state: hidden -> 128 -> 32 -> 8 -> 1 logit (ReLU between; the paper's head)."""

    def __init__(self, hidden_size: int, hidden_dims: Sequence[int] = (128, 32, 8)):
        super().__init__()
        layers: list[nn.Module] = []
        prev = hidden_size
        for d in hidden_dims:
            layers += [nn.Linear(prev, d), nn.ReLU()]
            prev = d
        layers.append(nn.Linear(prev, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (...) logits, computed in float32."""
        return self.mlp(h.float()).squeeze(-1)


def attach_value_head(model: "LatentModel", hidden_dims: Sequence[int] = (128, 32, 8)) -> ValueHead:
    """The model's value head; attached (and loaded from the checkpoint, if it saved one) on first call."""
    if VALUE_HEAD in model.side_modules:
        return model.side_modules[VALUE_HEAD]
    head = ValueHead(model.hidden_size, hidden_dims)
    return model.attach_side_module(VALUE_HEAD, head)


def accuracy_reward_func(reward_names: Sequence[str]) -> Callable[..., list[float | None]]:
    """The 0/1 correctness used as the value head's label: the first accuracy reward configured, else exact match."""
    from latentrl.rewards import correctness_reward, get_reward_funcs

    for name in ACCURACY_REWARDS:
        if name in reward_names:
            return get_reward_funcs([name])[0]
    return correctness_reward


def value_bce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, pos_weight: float) -> torch.Tensor:
    """Per-row mean over `mask` positions of BCE-with-logits against the row's label; (B,) (0 for empty rows)."""
    target = labels[:, None].expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none",
                                             pos_weight=torch.tensor(pos_weight, device=logits.device))
    return (bce * mask).sum(-1) / mask.sum(-1).clamp_min(1)


@register_method
class LatentRL(CoconutLatentMethod):
    name = "latent_rl"
    smoke_overrides: ClassVar[dict[str, Any]] = {
        "latent.operator": "hidden_state", "latent.num_latent_steps": 2, "latent.max_latent_steps": 2,
        "latent_rl.pretrain_prompts": 4, "latent_rl.pretrain_epochs": 1, "latent_rl.pretrain_batch_size": 8}
    description = "Value-head Latent RL on Coconut latents: maximise sigmoid(V) at latent positions (Özeren 2025)"
    needs_hidden = True
    #: the paper's Latent RL settings (configs/latent_rl_qwen2.5-1.5b.yaml)
    defaults: ClassVar[dict[str, Any]] = {
        "latent.operator": "hidden_state", "latent.num_latent_steps": 6, "beta": 0.0, "learning_rate": 5e-6,
        "weight_decay": 0.01, "reward_funcs": ["format", "math_verify"],
    }

    #: constructor argument -> its `latent_rl.*` config option
    OPTIONS: ClassVar[dict[str, str]] = {
        "pos_weight": "pos_weight", "value_loss_coef": "value_loss_coef", "hidden_dims": "value_head_dims",
        "pretrain_prompts": "pretrain_prompts", "pretrain_epochs": "pretrain_epochs",
        "pretrain_batch_size": "pretrain_batch_size", "pretrain_temperature": "pretrain_temperature",
        "pretrain_top_p": "pretrain_top_p",
    }

    def __init__(self, pos_weight: float | None = None, value_loss_coef: float | None = None,
                 hidden_dims: Sequence[int] | None = None, pretrain_prompts: int | None = None,
                 pretrain_epochs: int | None = None, pretrain_batch_size: int | None = None,
                 pretrain_temperature: float | None = None, pretrain_top_p: float | None = None,
                 label_func: Callable[..., list[float | None]] | None = None):
        """Each option left None comes from the run's `latent_rl:` config section (`LatentRLConfig`, whose help
        texts describe them: pos_weight, value_loss_coef, value_head_dims, pretrain_*); a value given here wins."""
        self.label_func = label_func
        """0/1 correctness of a completion (TRL reward signature), the value head's label; None: the first of
        math_verify / correctness / hrpo in `reward_funcs`, else exact-match correctness."""
        given = dict(pos_weight=pos_weight, value_loss_coef=value_loss_coef, hidden_dims=hidden_dims,
                     pretrain_prompts=pretrain_prompts, pretrain_epochs=pretrain_epochs,
                     pretrain_batch_size=pretrain_batch_size, pretrain_temperature=pretrain_temperature,
                     pretrain_top_p=pretrain_top_p)
        self._given = {k: v for k, v in given.items() if v is not None}
        self._resolve(LatentRLConfig())

    def _resolve(self, section: LatentRLConfig) -> None:
        """Set each option from the constructor (if given) else from `section`; re-done for every run's config,
        so the registry's shared instance never carries one run's options into the next."""
        for attr, option in self.OPTIONS.items():
            value = self._given.get(attr, getattr(section, option))
            setattr(self, attr, tuple(value) if attr == "hidden_dims" else value)

    def setup(self, model, args) -> None:
        super().setup(model, args)
        self._resolve(args.latent_rl)
        saved = model.has_saved_side_module(VALUE_HEAD)
        head = attach_value_head(model, self.hidden_dims)
        if saved:
            head.pretrained = True
        self._label_func = self.label_func or accuracy_reward_func(args.reward_funcs)

    def fsdp_conflict(self, ctx: MethodContext) -> str | None:
        head = ctx.model.side_modules[VALUE_HEAD]
        if self.pretrain_prompts > 0 and not getattr(head, "pretrained", False):
            return ("the value head is pretrained at the first step with its own optimizer on full weights; "
                    "build the method with pretrain_prompts=0 and a pretrained head (resume from a checkpoint "
                    "that has one)")
        return None

    def on_train_begin(self, ctx: MethodContext) -> dict[str, float]:
        """Pre-train the value head on the SFT model's rollouts when the checkpoint has no trained head."""
        head = ctx.model.side_modules[VALUE_HEAD]
        metrics: dict[str, float] = {}
        if self.pretrain_prompts > 0 and not getattr(head, "pretrained", False):
            res = pretrain_value_head(
                ctx, ctx.rows[: self.pretrain_prompts], epochs=self.pretrain_epochs,
                batch_size=self.pretrain_batch_size,
                pos_weight=self.pos_weight, hidden_dims=self.hidden_dims, seed=ctx.args.seed,
                reward_func=self._label_func, temperature=self.pretrain_temperature, top_p=self.pretrain_top_p,
            )
            metrics.update({"value/pretrain_bce_before": res.history[0]["bce"],
                            "value/pretrain_bce_after": res.history[-1]["bce"],
                            "value/pretrain_positive_rate": res.positive_rate,
                            "value/pretrain_features": float(res.num_features)})
        return metrics

    def policy_kind_masks(self, ctx, batch, policy_mask):
        return {}  # no policy-gradient term: the value-head objective below replaces it

    def extra_loss(self, ctx: MethodContext, micro, out):
        head: ValueHead = ctx.model.side_modules[VALUE_HEAD]
        ro = micro.rollout
        lat = (ro.latent_mask & ro.completion_mask).float()
        rows = lat.sum(-1) > 0
        B = ro.batch_size
        h = out.hidden
        labels = correctness_labels(getattr(self, "_label_func", None) or accuracy_reward_func(ctx.args.reward_funcs),
                                    micro.rows, micro.completions, device=h.device)
        # policy term: gradient to the backbone only (the head is frozen here, as the authors freeze it)
        frozen = {k: v.detach() for k, v in head.named_parameters()}
        v_pol = torch.func.functional_call(head, frozen, (h,))
        score = (torch.sigmoid(v_pol) * lat).sum(-1) / lat.sum(-1).clamp_min(1)
        policy = -(score * rows).sum() / B
        # value term: gradient to the head only (features detached)
        v_val = head(h.detach())
        bce_rows = value_bce(v_val, labels, lat, self.pos_weight)
        bce = (bce_rows * rows).sum() / B
        loss = policy + self.value_loss_coef * bce
        with torch.no_grad():
            n_rows = rows.sum().clamp_min(1)
            pred = (v_val > 0).float()
            acc = ((pred == labels[:, None]).float() * lat).sum() / lat.sum().clamp_min(1)
            metrics = {
                "value/sigmoid_mean": float((score * rows).sum() / n_rows),
                "value/bce": float((bce_rows * rows).sum() / n_rows),
                "value/accuracy": float(acc),
                "value/label_mean": float(labels.mean()),
                "latent_rl/objective": float(-policy),
            }
        return loss, metrics


# ---------------------------------------------------------------------------------------------------------------
# Value-head pre-training
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ValueHeadPretrainResult:
    """`history[0]` is the BCE before training; each later record is the full-set BCE after an epoch."""

    history: list[dict[str, float]]
    num_rollouts: int
    num_features: int
    positive_rate: float


@torch.no_grad()
def collect_value_data(
    source: Any,
    data: Sequence[Any],
    *,
    num_latent_steps: int | None = None,
    samples_per_prompt: int = 1,
    temperature: float = 0.2,
    top_p: float | None = 0.95,
    max_new_positions: int | None = None,
    reward_func: Callable[..., list[float | None]] | None = None,
    rollout_batch_size: int = 64,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(features (N, H), labels (N,), #rollouts): last hidden states at the latent positions of model rollouts.

    `source` is a `GRPOTrainer` (its model, operator, schedule, prompt hook and accuracy reward are used) or a
    `LatentModel` (then `num_latent_steps` is required). Rollouts sample the answer at `temperature`/`top_p` (the
    authors' value-data defaults: 0.2 / 0.95); each latent position's feature is labelled with its rollout's 0/1
    correctness. Features are the replay's hidden states at the latent positions: exactly what the value head
    reads during Latent RL.
    """
    from latentrl.config import LatentConfig
    from latentrl.data.schema import as_rows
    from latentrl.replay import replay
    from latentrl.rollout import SamplingParams, decode_completions, generate_rollout, left_pad

    model, operator, schedule, prompt_text, budget = _components(source, num_latent_steps, LatentConfig)
    budget = max_new_positions or budget
    if reward_func is not None:
        func = reward_func
    else:
        func = accuracy_reward_func(source.args.reward_funcs if hasattr(source, "args") else ())
    rows = [r for r in as_rows(data) for _ in range(samples_per_prompt)]
    tok = model.tokenizer
    gen = torch.Generator().manual_seed(seed)
    sampling = SamplingParams(max_new_positions=budget, temperature=temperature,
                              top_p=top_p if top_p is not None and top_p < 1.0 else None)
    was = model.training
    model.eval()
    feats, labels = [], []
    try:
        for s in range(0, len(rows), rollout_batch_size):
            part = rows[s : s + rollout_batch_size]
            ids, mask = left_pad([tok(prompt_text(r), add_special_tokens=False)["input_ids"] for r in part],
                                 tok.pad_token_id, device=model.device)
            ro = generate_rollout(model, ids, mask, sampling, operator, schedule, gen)
            y = correctness_labels(func, part, decode_completions(model, ro), device=model.device)
            out = replay(model, operator, ro, compute_entropy=False, return_hidden=True)
            lat = ro.latent_mask & ro.completion_mask
            feats.append(out.hidden[lat].float())
            labels.append(y[:, None].expand_as(lat)[lat])
    finally:
        model.train(was)
    return torch.cat(feats), torch.cat(labels), len(rows)


def _components(source: Any, num_latent_steps: int | None, latent_config_cls):
    from latentrl.model import LatentModel

    if isinstance(source, LatentModel):
        if num_latent_steps is None:
            raise ValueError("pretrain_value_head(model, ...) needs num_latent_steps (the thoughts per rollout)")
        latent = latent_config_cls(operator="hidden_state", num_latent_steps=num_latent_steps,
                                   max_latent_steps=max(64, num_latent_steps))
        op, sched = coconut_components(latent, source)
        start = source.latent_tokens.start if source.latent_tokens is not None else LatentTokens.start
        return source, op, sched, (lambda row: row["prompt"] + start), 64
    trainer = source
    sched = trainer.schedule
    if num_latent_steps is not None:
        sched = dataclasses.replace(sched, num_latent_steps=num_latent_steps)
    return trainer.model, trainer.operator, sched, trainer.prompt_text, trainer.args.max_completion_length


def pretrain_value_head(
    source: Any,
    data: Sequence[Any] | None = None,
    *,
    features: tuple[torch.Tensor, torch.Tensor] | None = None,
    epochs: int = 20,
    learning_rate: float = 3e-4,
    batch_size: int = 1024,
    pos_weight: float = 20.0,
    hidden_dims: Sequence[int] = (128, 32, 8),
    seed: int = 0,
    **collect_kwargs: Any,
) -> ValueHeadPretrainResult:
    """Pre-train the value head with BCE (pos_weight) on the correctness of the SFT model's rollouts.

    `source`: a `GRPOTrainer` built with `method="latent_rl"` (call this before `trainer.train()`) or a
    `LatentModel` (the head is attached to it, so `save_pretrained` stores it and a latent_rl trainer built from
    the saved folder loads it). Give `data` (prompts/examples to roll out; see `collect_value_data` for the
    rollout options) or precomputed `features=(X, y)`. The backbone is not trained here. Authors' head training:
    AdamW lr 3e-4, batch 1024.
    """
    from latentrl.model import LatentModel

    model = source if isinstance(source, LatentModel) else source.model
    head = attach_value_head(model, hidden_dims)
    n_rollouts = 0
    if features is None:
        if data is None:
            raise ValueError("pretrain_value_head needs data to roll out, or features=(X, y)")
        X, y, n_rollouts = collect_value_data(source, data, seed=seed, **collect_kwargs)
    else:
        X, y = features
    X, y = X.detach().float().to(model.device), y.detach().float().to(model.device)
    if X.shape[0] == 0:
        raise ValueError("no latent positions to train the value head on (num_latent_steps is 0?)")
    # the shared optimizer step on the head alone (the backbone is frozen here), one seeded permutation per epoch
    steps = OptimizerSteps(list(head.parameters()), torch.optim.AdamW(head.parameters(), lr=learning_rate))
    order = EpochOrder(X.shape[0], torch.Generator().manual_seed(seed))
    pw = torch.tensor(pos_weight, device=X.device)

    def bce(idx: list[int], share: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        i = torch.tensor(share, device=X.device)
        return F.binary_cross_entropy_with_logits(head(X[i]), y[i], pos_weight=pw), {}

    def full_bce() -> dict[str, float]:
        with torch.no_grad():
            logits = head(X)
            return {"bce": float(F.binary_cross_entropy_with_logits(logits, y, pos_weight=pw)),
                    "accuracy": float(((logits > 0).float() == y).float().mean())}

    history = [{"epoch": 0, **full_bce()}]
    head.train()
    for _ in range(epochs):
        for idx in order.one_pass(batch_size):
            steps.step(bce, idx)
        history.append({"epoch": len(history), **full_bce()})
    head.pretrained = True  # a latent_rl trainer will not pre-train it again
    return ValueHeadPretrainResult(history, n_rollouts, int(X.shape[0]), float(y.mean()))
