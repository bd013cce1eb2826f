"""What a latent thought "says": its nearest vocabulary tokens, its norm and its mixing weights, per position.

`inspect_thoughts` runs one rollout of a model with a method's own thought operator and schedule (greedy and
noise-free by default) and reads every latent position back in vocabulary space.

**The thought vector** of a latent position is the *input embedding the model is fed there*: exactly what the
method's operator returns (`ThoughtOperator.rebuild` of the stored payload, identical to what the rollout fed). That
is the one vector every method has and the one the model actually reads: the hidden state for Coconut
(`hidden_state`), Σ_k w_k E[i_k] for the mixtures (`soft_mixture`, `gumbel_softmax`, `gumbel_topk`), the gated
a·E[x] + sqrt(1-a²)·(i·h) for HRPO, W z + b for DLR. Two readings of it:

* **LM head**: top-k of softmax(lm_head(thought)) at temperature 1. For a hidden-state thought this is the logit
  lens, i.e. the model's own next-token distribution at the previous position. For a thought in embedding space with
  tied embeddings (the shipped CPU-suite models) lm_head(x) = E x: the dot product with each token's embedding, so
  it favours tokens whose embeddings are long. Its softmax is sharp only when the thought's norm is large; a small
  thought gives a flat distribution whatever its direction (compare `norm` with `embedding_norm`).
* **Cosine**: top-k of cos(thought, E[v]) over the input embedding matrix: direction only, norm-free.

**Mixing weights** (what the operator mixed, from the payload stored in the `Rollout`): the (ids, weights) of
`soft_mixture` / `gumbel_softmax`, the weights softmax(scores / τ_g) of `gumbel_topk`, and for HRPO's gate
(`hrpo_gate`, mode `gate`) the mean over dimensions of a (`embeds_ratio`, weight of the sampled token's embedding)
and of sqrt(1 - a²) (`hidden_ratio`, weight of the projected hidden state), the quantities HRPO logs, plus the
nearest tokens (cosine) of the mixed-in projected state h = E^T p / ||p|| alone (`hidden_part`): the continuous part
that carries the whole next-token distribution p rather than the one sampled token.

`render_table` prints the result with `rich`; `plot_heatmap` draws positions × top-k tokens (colour = probability /
cosine / weight, token text in the cells).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from latentrl.data.schema import as_rows
from latentrl.model import LatentModel
from latentrl.rollout import Rollout, SamplingParams, ThinkingSchedule, generate_rollout, left_pad
from latentrl.thoughts import ThoughtOperator

if TYPE_CHECKING:
    from latentrl.config import GRPOConfig
    from latentrl.methods import Method

__all__ = [
    "TokenScore", "ThoughtPosition", "RowInspection", "ThoughtInspection", "NoLatentThoughtsError",
    "build_method_operator", "inspect_thoughts", "render_table", "plot_heatmap", "VIEWS",
]

VIEWS = ("lm_head", "cosine", "mixture", "hidden_part")
"""The per-position top-k lists a heatmap can show (see the module docstring)."""
VIEW_TITLES = {"lm_head": "LM head softmax(lm_head(thought))", "cosine": "cosine to input embeddings",
               "mixture": "operator mixing weights",
               "hidden_part": "HRPO projected state h = E^T p / ||p||: cosine to input embeddings"}


class NoLatentThoughtsError(ValueError):
    """The method forms no latent positions (plain token decoding): there is nothing to inspect."""


@dataclass
class TokenScore:
    """One vocabulary entry of a top-k list."""

    token_id: int
    token: str
    score: float


@dataclass
class ThoughtPosition:
    """One latent position of one row."""

    position: int  # index in the completion (0 = first generated position)
    recorded_id: int  # id the rollout recorded there (sampled token for HRPO, top-1 / argmax for mixtures)
    recorded_token: str
    norm: float  # L2 norm of the thought vector
    lm_head: list[TokenScore]  # top-k of softmax(lm_head(thought))
    cosine: list[TokenScore]  # top-k of cos(thought, E[v])
    mixture: list[TokenScore] | None = None  # top-k of the operator's non-zero mixing weights (mixture operators)
    gate: dict[str, float] | None = None  # HRPO: {"embeds_ratio": mean a, "hidden_ratio": mean sqrt(1 - a^2)}
    hidden_part: list[TokenScore] | None = None  # HRPO gate: top-k cosine of the mixed-in projected state h

    def top(self, view: str) -> list[TokenScore] | None:
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; allowed: {VIEWS}")
        return getattr(self, view)


@dataclass
class RowInspection:
    """One prompt: its completion and the reading of each of its latent positions."""

    prompt: str
    completion: str  # every generated position decoded (latent ones as their recorded token)
    reference: str | None  # the dataset's reference completion, when the prompt came from a dataset row
    thoughts: list[ThoughtPosition]
    vectors: torch.Tensor  # (L, H) float32 thought vectors, in the order of `thoughts`


@dataclass
class ThoughtInspection:
    """What `inspect_thoughts` returns."""

    method: str
    operator: str  # the operator's registry name (e.g. "gumbel_softmax")
    top_k: int
    embedding_norm: float  # mean L2 norm of the input embedding rows: the scale a thought's norm compares with
    rows: list[RowInspection]
    rollout: Rollout = field(repr=False)

    @property
    def views(self) -> tuple[str, ...]:
        """The views this result has data for (`mixture`: mixture operators; `hidden_part`: HRPO's gate)."""
        return tuple(v for v in VIEWS if any(t.top(v) is not None for r in self.rows for t in r.thoughts))


def build_method_operator(model: LatentModel, method: "str | Method", config: "GRPOConfig | None" = None,
                          ) -> tuple["Method", ThoughtOperator, ThinkingSchedule]:
    """The method's thought operator and schedule for `model`, built exactly as training builds them
    (`Method.build`: the method's side modules, e.g. HRPO's gate or DLR's assistant, are attached with the weights
    the checkpoint saved). Raises `NoLatentThoughtsError` for discrete-only methods.
    """
    from latentrl.config import GRPOConfig
    from latentrl.methods import METHODS, Method, get_method

    m = method if isinstance(method, Method) else get_method(method)
    if config is None:
        config = GRPOConfig(model_name_or_path=str(getattr(model.model, "name_or_path", "") or "model"), method=m.name)
    m.check_scorable(model, config.model_name_or_path)
    parts = m.build(model, config)
    if not parts.has_latent:
        latent = sorted(n for n in METHODS if n != "grpo")
        raise NoLatentThoughtsError(
            f"method {m.name!r} decodes tokens only (no latent positions), so it has no thoughts to inspect; "
            f"pick a latent method ({', '.join(latent)}) with --method or the run's config")
    return m, parts.operator, parts.schedule


def _token_text(model: LatentModel, token_id: int) -> str:
    text = model.tokenizer.decode([token_id], skip_special_tokens=False).strip()
    return text or str(model.tokenizer.convert_ids_to_tokens(token_id))


def _top(model: LatentModel, scores: torch.Tensor, ids: torch.Tensor | None, k: int) -> list[list[TokenScore]]:
    """Per row of `scores` (N, M), the k best as TokenScores; `ids` (N, M) maps columns to token ids (None: vocab)."""
    k = min(k, scores.shape[-1])
    top = torch.topk(scores, k, dim=-1)
    tok_ids = top.indices if ids is None else ids.gather(-1, top.indices)
    return [[TokenScore(int(i), _token_text(model, int(i)), float(s)) for i, s in zip(ri.tolist(), rs.tolist())]
            for ri, rs in zip(tok_ids, top.values)]


@torch.no_grad()
def inspect_thoughts(
    model: LatentModel,
    method: "str | Method",
    prompts: Sequence[str | dict[str, Any]],
    *,
    config: "GRPOConfig | None" = None,
    top_k: int = 5,
    max_new_positions: int | None = None,
    temperature: float = 0.0,
    seed: int = 0,
) -> ThoughtInspection:
    """Run one rollout per prompt with `method`'s operator and schedule and read back every latent position.

    `prompts`: texts, `Example`s or dataset rows with a `prompt` column (their `completion` is kept as the
    reference).
    `config`: the run's `GRPOConfig` (latent settings, e.g. LEPO's `num_latent_steps`); default: the config's
    defaults. `temperature=0` (default) decodes greedily with the operator's noise off; > 0 samples with noise on
    (seeded by `seed`). `max_new_positions` defaults to the config's `max_completion_length`.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not prompts:
        raise ValueError("no prompts to inspect")
    rows = as_rows([{"prompt": p} if isinstance(p, str) else p for p in prompts])
    m, operator, schedule = build_method_operator(model, method, config)
    n_new = max_new_positions or (config.max_completion_length if config is not None else 64)

    tok = model.tokenizer
    was_training = model.training
    model.eval()
    operator.set_eval_mode(temperature == 0)
    try:
        ids, mask = left_pad([tok(m.prompt_text(r), add_special_tokens=False)["input_ids"] for r in rows],
                             tok.pad_token_id, device=model.device)
        sampling = SamplingParams(max_new_positions=n_new, temperature=temperature)
        ro = generate_rollout(model, ids, mask, sampling, operator, schedule, torch.Generator().manual_seed(seed))
        E = model.embedding_matrix.float()
        E_unit = F.normalize(E, dim=-1)
        out_rows = []
        for b, r in enumerate(rows):
            lat = ro.latent_mask[b] & ro.completion_mask[b]
            pos = lat.nonzero().flatten()
            rec = ro.completion_ids[b, pos]
            payload = {k: v[b, pos] for k, v in ro.payload.items()}
            thoughts = operator.rebuild(model, rec, payload).float() if len(pos) else E.new_zeros(0, E.shape[1])
            lm = _top(model, model.lm_head(thoughts.to(E.dtype)).float().softmax(-1), None, top_k)
            cos = _top(model, F.normalize(thoughts, dim=-1) @ E_unit.T, None, top_k)
            mixed = operator.mixed_tokens(payload) if len(pos) else None
            mix = _top(model, mixed[1], mixed[0], top_k) if mixed is not None else [None] * len(pos)
            # tokens the operator filtered out (-inf before the softmax) have weight exactly 0: not in the mixture
            mix = [m if m is None else [s for s in m if s.score > 0] for m in mix]
            gates = operator.gate_ratios(model, rec) if len(pos) else None
            hid = ([None] * len(pos) if gates is None else
                   _top(model, F.normalize(payload["hidden"].float(), dim=-1) @ E_unit.T, None, top_k))
            views = [
                ThoughtPosition(
                    position=int(p), recorded_id=int(i), recorded_token=_token_text(model, int(i)),
                    norm=float(v.norm()), lm_head=lm[j], cosine=cos[j], mixture=mix[j],
                    gate=({"embeds_ratio": float(gates[j, 0]), "hidden_ratio": float(gates[j, 1])}
                          if gates is not None else None),
                    hidden_part=hid[j],
                )
                for j, (p, i, v) in enumerate(zip(pos.tolist(), rec.tolist(), thoughts))
            ]
            done = ro.completion_mask[b]
            text = tok.decode(ro.completion_ids[b, done].tolist(), skip_special_tokens=False)
            out_rows.append(RowInspection(prompt=r["prompt"], completion=text, reference=r.get("completion"),
                                          thoughts=views, vectors=thoughts.cpu()))
    finally:
        operator.set_eval_mode(False)
        model.train(was_training)
    return ThoughtInspection(method=m.name, operator=operator.name, top_k=top_k,
                             embedding_norm=float(E.norm(dim=-1).mean()), rows=out_rows, rollout=ro)


# ------------------------------------------------------------------------------------------------- rendering
def _cell(scores: list[TokenScore] | None, digits: int = 2) -> str:
    if scores is None:
        return ""
    return "  ".join(f"{s.token} {s.score:.{digits}f}" for s in scores)


def render_table(result: ThoughtInspection, console: Any = None) -> None:
    """Print one `rich` table per prompt: position, recorded token, norm, the top-k lists, HRPO's gate ratios."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(f"[bold]{result.method}[/] (operator {result.operator}): top-{result.top_k} per latent position; "
                  f"mean input-embedding norm {result.embedding_norm:.2f}")
    has_mix = "mixture" in result.views
    has_gate = any(t.gate is not None for r in result.rows for t in r.thoughts)
    for r in result.rows:
        console.print(f"\n[bold]prompt[/]     {r.prompt}\n[bold]completion[/] {r.completion}")
        if r.reference is not None:
            console.print(f"[bold]reference[/]  {r.reference.strip()}")
        if not r.thoughts:
            console.print("[yellow]no latent positions in this completion[/]")
            continue
        table = Table(show_lines=False, header_style="bold")
        table.add_column("pos", justify="right")
        table.add_column("recorded")
        table.add_column("norm", justify="right")
        table.add_column("LM head top-k (prob)")
        table.add_column("cosine top-k")
        if has_mix:
            table.add_column("mixture weights")
        if has_gate:
            table.add_column("gate a / √(1-a²)", justify="right")
            table.add_column("h (hidden part) cosine top-k")
        for t in r.thoughts:
            cells = [str(t.position), t.recorded_token, f"{t.norm:.2f}", _cell(t.lm_head), _cell(t.cosine)]
            if has_mix:
                cells.append(_cell(t.mixture))
            if has_gate:
                cells.append(f"{t.gate['embeds_ratio']:.3f} / {t.gate['hidden_ratio']:.3f}" if t.gate else "")
                cells.append(_cell(t.hidden_part))
            table.add_row(*cells)
        console.print(table)


def plot_heatmap(result: ThoughtInspection, path: str | Path, views: Sequence[str] | None = None,
                 max_positions: int | None = None) -> Path:
    """One heatmap per (prompt, view): x = latent positions (recorded token below), y = rank 1..k, colour = the
    view's score (probability / cosine / weight, on one 0-1 scale), the token written in each cell."""
    from matplotlib.figure import Figure

    views = tuple(views) if views is not None else result.views
    for v in views:
        if v not in VIEWS:
            raise ValueError(f"unknown view {v!r}; allowed: {VIEWS}")
    rows = [r for r in result.rows if r.thoughts]
    if not rows:
        raise ValueError("no latent positions in any completion: nothing to plot")
    L = max(len(r.thoughts[:max_positions]) for r in rows)
    k = result.top_k
    n_axes = len(rows) * len(views)
    fig = Figure(figsize=(max(6.0, 0.62 * L + 2.0), n_axes * (0.36 * k + 1.3)), layout="constrained")
    axes = fig.subplots(n_axes, 1, squeeze=False)[:, 0]
    image = None
    for ri, r in enumerate(rows):
        thoughts = r.thoughts[:max_positions]
        for vi, view in enumerate(views):
            ax = axes[ri * len(views) + vi]
            values = torch.full((k, L), float("nan"))
            for j, t in enumerate(thoughts):
                for rank, s in enumerate(t.top(view) or []):
                    values[rank, j] = s.score
                    ax.text(j, rank, s.token, ha="center", va="center", fontsize=7,
                            color="black" if s.score > 0.6 else "white")
            image = ax.imshow(values.numpy(), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
            ax.set_yticks(range(k), [str(i + 1) for i in range(k)], fontsize=7)
            ax.set_xticks(range(len(thoughts)), [f"{t.position}\n{t.recorded_token}" for t in thoughts], fontsize=6)
            ax.set_title(f"{VIEW_TITLES[view]}  |  {r.prompt}", fontsize=8, loc="left")
            ax.set_ylabel("rank", fontsize=7)
    fig.colorbar(image, ax=list(axes), shrink=0.6, label="probability / cosine / weight")
    fig.suptitle(f"{result.method} ({result.operator}) latent thoughts: top-{k} tokens per position\n"
                 "(x: completion position / recorded token)", fontsize=9)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
