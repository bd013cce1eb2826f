"""Latent-GRPO's thought: a Gumbel-perturbed top-K superposition of token embeddings (one-sided noise).

Deng et al. 2026, "Latent-GRPO" (arXiv 2604.27998); authors' code github.com/DJC-GO-SOLO/Latent-GRPO (SGLang
`sampler.py` for the rollout, verl `torch_functional.py::logprobs_from_logits_topk_gumbel` for the loss).

One latent step, from the logits of the previous position (T = `latent_temperature`, 1.0 in the paper)::

    lp   = log_softmax(logits / T)                          full-vocabulary log-probs
    mask = top-p(lp, p) ∪ top-K(lp)                          nucleus that always keeps >= K tokens
    G    = clamp(Gumbel(0, 1), c_min, c_max)                 c_min = -1.5, c_max = 3.0
    G    = G - c_min            (one-sided: G >= 0)          then G *= noise_scale (1.0)
    g    = lp + G  on the mask, -inf elsewhere
    (i_1..i_K, g_1..g_K) = top-K of g
    e    = Σ_k softmax(g / τ_g)_k · E[i_k]                   τ_g = gumbel_tau (1.0)

Stored payload: `ids` (K,) and `scores` (K,) = the perturbed scores g. `rebuild` recomputes the weights from the
stored scores, so the input is reproduced exactly and (unless `detach_embeddings`) gradients reach E.

Per-position log-prob (a surrogate, exactly the authors' form): the mean Gumbel(0, 1) log-density of the noise the
*current* policy implies for the stored scores,

    ε_k = g_k - log_softmax(logits_θ / T)[i_k],     log p = (1/K) Σ_k [ -ε_k - exp(-ε_k) ].

Under the rollout's parameters ε_k is exactly the noise that was drawn. With one-sided noise that is the *shifted*
value G - c_min >= 0, and the authors evaluate the standard Gumbel density at that shifted value (not at the
pre-shift draw, and not the density of the clamped / shifted distribution): a surrogate, not a likelihood. Its
gradient w.r.t. lp_θ[i_k] is (1 - exp(-ε_k)) / K >= 0 for ε_k >= 0, so a positive advantage raises every selected
token ("exploration-optimization alignment"). Not implemented from the authors' code: their straight-through
"flip" of the gradient at entries with A <= 0 and ε < 0; it never fires on-policy with one-sided noise (ε >= 0 at
the first update) — see docs/methods/latent_grpo.md.

`logprob="likelihood"` (`latent.gumbel_logprob`; ours, not the paper's) scores a step with the exact log-likelihood
of what was stored instead. With x = G / s + c_min (one-sided; G / s two-sided) the Gumbel draw behind a score,
x_k for the chosen entries and x_j = (g_K - lp_θ[j]) / s + c_min for the others (g_K the K-th score):

    log p = Σ_k [log φ(x_k) - log s]  +  Σ_{j in the nucleus, not chosen, x_j < c_max} -exp(-x_j)

(φ the Gumbel(0, 1) density, exp(-exp(-x)) its CDF: the top-K of independent entries). A chosen entry whose draw
was clamped (x_k on a bound, within 1e-4) is a point mass whose position moves with θ: it adds nothing. Its
gradient w.r.t. lp_θ[i_k] is (1 - exp(-x_k)) / s, negative for a draw below the Gumbel mode, and each competitor
that stayed below adds -exp(-x_j) / s: the policy gradient of the sampling distribution, unlike the surrogate's.

The id recorded at a latent position is, by default, the *unperturbed* top-1 (`record="unperturbed"`); the authors
record the perturbed top-1 (`record="perturbed"`). It only matters for displaying latent positions: the end-of-
thinking rule of the rollout engine looks at the unperturbed top-1 itself, and the replay never reads the id.

Deterministic mode (`set_eval_mode(True)` without `eval_noise`): no noise, i.e. the plain top-K superposition
e = Σ_k softmax(lp_topk / τ_g)_k E[i_k] (the authors' noise-free evaluation); its ε is 0, so log p = -1.

Cost: the clamped noise G lies in an interval of width w = (c_max - c_min) · noise_scale, so an entry whose lp is
more than w below the K-th largest lp can never reach the perturbed top-K (each of the K best scores at least
that K-th lp + the noise minimum). `step` therefore draws noise only for the candidates — a prefix of the sorted
vocabulary, which also carries the nucleus — and gives the same distribution as noise on every entry (checked in
`tests/test_sampling.py`). On a peaked (trained) model the candidates are a handful; on a flat one they can be the whole
vocabulary, and above `sort_limit` candidates `step` switches to a sort-free path (`perturbed_topk_unsorted`: noise on
every entry, nucleus membership tested only for the 2K best perturbed entries), the same distribution again. At
small vocabularies (V <= `sort_all_limit`) `step` sorts whole rows and noises every entry instead (`_step_whole_row`:
fewer ops when most entries are candidates anyway; the same distribution).
At large vocabularies (V > 2 * pool_blocks * pool_block, e.g. 152k) `step` instead draws noise for a pool of ~1000
entries per row above a block-maximum threshold and proves, row by row, that no entry outside it can reach the
perturbed top-K (`perturbed_topk_pooled`); rows it cannot decide (rare) fall back to the sort-free path with the
pool's noise kept, so the distribution is still exactly that of noise on every entry. It costs one exp pass (the
log-normaliser) and one max pass over the vocabulary, whatever the shape of the distribution.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from latentrl.sampling import (
    check_generator,
    gumbel_noise,
    logsumexp_rows,
    tempered,
    topk_rows,
    uniform,
)
from latentrl.thoughts import register_thought_operator
from latentrl.thoughts.base import Payload, PayloadSpec, ThoughtOperator, ThoughtStep, mix_embeddings

if TYPE_CHECKING:
    from latentrl.config import LatentConfig

__all__ = ["GumbelTopKThought", "gumbel_log_density"]

RECORD_CHOICES = ("unperturbed", "perturbed")
LOGPROB_CHOICES = ("authors", "likelihood")


def gumbel_log_density(x: torch.Tensor) -> torch.Tensor:
    """log of the standard Gumbel(0, 1) density, -x - exp(-x)."""
    return -x - torch.exp(-x)


def _latent_config(config: "LatentConfig | None") -> "LatentConfig":
    if config is not None:
        return config
    from latentrl.config import LatentConfig

    return LatentConfig()


def _pick(value, default):
    return default if value is None else value


def _init_common(op: ThoughtOperator, name: str, config: "LatentConfig | None", *, top_k, top_p, temperature, tau,
                 eval_noise) -> "LatentConfig":
    """Set and check on `op` the settings both Gumbel thoughts share: top_k, top_p, temperature, tau, eval_noise,
    each from its argument or, where that is None, from `config` (top_k, top_p, latent_temperature, gumbel_tau,
    eval_noise). `name` prefixes the error messages. Returns the config, for the operator's own settings."""
    cfg = _latent_config(config)
    op.top_k = int(_pick(top_k, cfg.top_k))
    op.top_p = float(_pick(top_p, cfg.top_p))
    op.temperature = float(_pick(temperature, cfg.latent_temperature))
    op.tau = float(_pick(tau, cfg.gumbel_tau))
    op.eval_noise = bool(_pick(eval_noise, cfg.eval_noise))
    if op.top_k < 1:
        raise ValueError(f"{name} top_k must be >= 1, got {op.top_k}")
    if not 0 < op.top_p <= 1:
        raise ValueError(f"{name} top_p must be in (0, 1], got {op.top_p}")
    if op.temperature <= 0 or op.tau <= 0:
        raise ValueError(f"{name} temperature and tau must be > 0, got {op.temperature}, {op.tau}")
    return cfg


def _init_record(op: ThoughtOperator, name: str, record: str, choices: tuple[str, ...],
                 detach_embeddings: bool) -> None:
    """Check and set `record`, `detach_embeddings`, and start in sampling (non-deterministic) mode."""
    if record not in choices:
        raise ValueError(f"{name} record must be one of {choices}, got {record!r}")
    op.record = record
    op.detach_embeddings = detach_embeddings
    op.deterministic = False


def _pack(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """((B, M) column indices of the True entries of each row of `mask`, left-aligned and padded with 0; (B, M)
    whether each is real), M = the largest count in a row."""
    counts = mask.sum(-1, dtype=torch.int32).long()  # a bool sum into int64 is ~10x slower
    width = int(counts.max()) if counts.numel() else 0
    r, c = mask.nonzero(as_tuple=True)
    pos = torch.arange(r.numel(), device=mask.device) - (counts.cumsum(0) - counts)[r]
    cols = torch.zeros(mask.shape[0], width, dtype=torch.long, device=mask.device)
    cols[r, pos] = c
    return cols, torch.arange(width, device=mask.device) < counts[:, None]


@register_thought_operator
class GumbelTopKThought(ThoughtOperator):
    """Latent-GRPO's stochastic top-K superposition (see the module docstring for the equations)."""

    name = "gumbel_topk"
    stochastic = True
    #: above this many candidates in a row, `step` takes the sort-free path (`perturbed_topk_unsorted`)
    sort_limit: int = 4096
    #: at most this many vocabulary entries, `step` sorts whole rows instead (`_step_whole_row`; fewer ops)
    sort_all_limit: int = 128
    #: the pooled path (`perturbed_topk_pooled`, vocabularies above 2 * pool_blocks * pool_block entries): entries
    #: per strided block, and blocks pooled per row (~pool_blocks entries end up noised; 1024 keeps the fallback
    #: below ~1 in 1600 rows on a flat 152k-entry distribution with K = 30)
    pool_block: int = 16
    pool_blocks: int = 1024
    #: the exact likelihood (`logprob="likelihood"`) sorts a row's competitors when they are at most this many, and
    #: works on whole rows otherwise (`_likelihood_rows`)
    competitor_sort_limit: int = 2048

    def __init__(
        self,
        config: "LatentConfig | None" = None,
        *,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        tau: float | None = None,
        one_sided: bool | None = None,
        clamp_min: float | None = None,
        clamp_max: float | None = None,
        noise_scale: float | None = None,
        eval_noise: bool | None = None,
        record: str = "unperturbed",
        detach_embeddings: bool = False,
        logprob: str | None = None,
    ):
        """Values come from `config` (a `LatentConfig`: top_k, top_p, latent_temperature, gumbel_tau,
        one_sided_noise, noise_clamp_min/max, eval_noise; `noise_scale` and `gumbel_logprob` if the config has them)
        unless given here."""
        super().__init__()
        cfg = _init_common(self, "gumbel_topk", config, top_k=top_k, top_p=top_p, temperature=temperature,
                           tau=tau, eval_noise=eval_noise)
        self.one_sided = bool(_pick(one_sided, cfg.one_sided_noise))
        self.clamp_min = float(_pick(clamp_min, cfg.noise_clamp_min))
        self.clamp_max = float(_pick(clamp_max, cfg.noise_clamp_max))
        self.noise_scale = float(_pick(noise_scale, getattr(cfg, "noise_scale", 1.0)))
        if not self.clamp_min < self.clamp_max:
            raise ValueError(f"gumbel_topk needs clamp_min < clamp_max, got {self.clamp_min}, {self.clamp_max}")
        if self.noise_scale < 0:
            raise ValueError(f"gumbel_topk noise_scale must be >= 0, got {self.noise_scale}")
        self.logprob = str(_pick(logprob, getattr(cfg, "gumbel_logprob", "authors")))
        if self.logprob not in LOGPROB_CHOICES:
            raise ValueError(f"gumbel_topk logprob must be one of {LOGPROB_CHOICES}, got {self.logprob!r}")
        _init_record(self, "gumbel_topk", record, RECORD_CHOICES, detach_embeddings)

    # ------------------------------------------------------------------ interface
    def payload_spec(self, model) -> dict[str, PayloadSpec]:
        k = min(self.top_k, model.vocab_size)
        return {"ids": PayloadSpec((k,), torch.long), "scores": PayloadSpec((k,), torch.float32)}

    def set_eval_mode(self, deterministic: bool) -> None:
        """Noise off for evaluation unless `eval_noise` (Latent-GRPO: Pass@1 noise-free, Pass@k noisy)."""
        self.deterministic = bool(deterministic) and not self.eval_noise

    def noise(self, shape, generator: torch.Generator | None, device) -> torch.Tensor:
        """The noise added to the log-probs: clamped Gumbel, shifted to >= 0 when one-sided, times noise_scale."""
        if self.clamp_min > -3.5:  # the clamp covers what gumbel_noise's guards against log(0) do (U < 1e-20
            # gives a draw below -3.8): skip them, the same values
            return self._shape_noise(uniform(shape, generator, device).log_().neg_().log_().neg_())
        return self._shape_noise(gumbel_noise(shape, generator, device))

    def _shape_noise(self, g: torch.Tensor) -> torch.Tensor:
        """In place on a fresh noise tensor `g` (a latent step's ops are few and small: each one counts)."""
        g = g.clamp_(self.clamp_min, self.clamp_max)
        if self.one_sided:
            g = g.sub_(self.clamp_min)
        return g if self.noise_scale == 1.0 else g.mul_(self.noise_scale)

    def noise_max(self, device) -> torch.Tensor:
        """The largest value `noise` can return, computed with the same float32 operations (so a score lp + G is
        never above fl(lp + noise_max))."""
        return self._shape_noise(torch.tensor([self.clamp_max], dtype=torch.float32, device=device))

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary log-probs at the latent temperature (the authors' global log-softmax, T = 1)."""
        return (logits.float() / self.temperature).log_softmax(-1)

    def _tempered(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """What the sorted and sort-free paths of `step` start from, computed once: x = logits / T (float32), the
        top-K of x (values, ids), and the number of candidates M (entries with x >= K-th x - noise width; K in
        deterministic mode)."""
        x = tempered(logits, self.temperature)
        values, ids = topk_rows(x, min(self.top_k, x.shape[-1]))
        if self.deterministic:
            return x, values, ids, values.shape[-1]
        return x, values, ids, self._num_candidates(x, values[..., -1:])

    def _num_candidates(self, x: torch.Tensor, kth: torch.Tensor) -> int:
        """The most entries in a row within the noise width of the row's K-th value `kth` (B, 1): every entry that
        can reach the perturbed top-K, or stay below its K-th score with a clamped draw, is among them."""
        width = (self.clamp_max - self.clamp_min) * self.noise_scale
        return int((x >= kth - width).sum(-1, dtype=torch.int32).max())  # int32: a bool sum is 20x slower

    def candidates(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(lp, ids, keep), each (B, M): the M highest log-probs in descending order, their ids, and whether each
        lies in the nucleus (at least K kept). M covers, in every row, every entry that can reach the perturbed
        top-K (lp >= K-th lp - noise width); entries past a row's own bound have no chance there either."""
        x, top_values, _, m = self._tempered(logits)
        return self._sorted_candidates(x, logsumexp_rows(x), top_values.shape[-1], m)

    def _sorted_candidates(self, x: torch.Tensor, lse: torch.Tensor, k: int, m: int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        values, ids = torch.topk(x, m, dim=-1)  # sorted descending
        lp = values - lse
        return lp, ids, self._prefix_nucleus(lp, k)

    def _prefix_nucleus(self, lp: torch.Tensor, k: int) -> torch.Tensor:
        """(B, M) nucleus membership (at least K kept) of descending-sorted log-probs `lp` that are a *prefix* of the
        sorted vocabulary (every entry above one of them is among them), so the mass before each is a cumsum."""
        keep = torch.ones_like(lp, dtype=torch.bool)
        if self.top_p < 1.0 and lp.shape[-1] > k:
            # entry j stays while the mass before it is below top_p (a prefix: the cumsum never decreases); the
            # first k always stay. The same mask as `_nucleus_size` on the cumsum, in a third of its ops
            torch.lt(lp.exp().cumsum(-1)[:, :-1], self.top_p, out=keep[:, 1:])
            keep[:, :k] = True
        return keep

    def step(self, model, logits, hidden, *, generator=None) -> ThoughtStep:
        check_generator(generator, logits.device)  # fail before any work, not inside a CUDA kernel
        V = logits.shape[-1]
        if not self.deterministic and V > 2 * self.pool_blocks * self.pool_block:
            x = tempered(logits, self.temperature)
            payload, token, lse = self._perturbed_topk_pooled(x, generator)
            if self.record == "perturbed":
                token = payload["ids"][:, 0]
            return self._finish(model, token, payload, x, lse)
        if not self.deterministic and V <= self.sort_all_limit and self.logprob == "authors":
            return self._step_whole_row(model, logits, generator)
        x, top_values, top_ids, m = self._tempered(logits)
        lse = logsumexp_rows(x)
        k = top_values.shape[-1]
        if self.deterministic or m <= self.sort_limit:
            lp, ids, keep = self._sorted_candidates(x, lse, k, m)
            if self.deterministic:
                scores = lp  # the top-K of lp always lie inside the nucleus mask
            else:
                scores = (lp + self.noise(lp.shape, generator, lp.device)).masked_fill(~keep, float("-inf"))
            top = torch.topk(scores, k, dim=-1)
            payload = {"ids": ids.gather(-1, top.indices), "scores": top.values.float()}
        else:
            payload = self._perturbed_topk_unsorted(x, lse, top_values[..., -1:], self.noise(x.shape, generator, x.device))
        token = top_ids[:, 0] if self.record == "unperturbed" else payload["ids"][:, 0]
        return self._finish(model, token, payload, x, lse)

    def _step_whole_row(self, model, logits: torch.Tensor, generator) -> ThoughtStep:
        """`step` at small vocabularies (V <= `sort_all_limit`): one sort of each whole row gives the unperturbed
        top-1, the log-normaliser (the last entry of the cumulative sum the nucleus needs anyway) and the nucleus;
        every entry gets noise. The same distribution as the candidate prefix (entries past it never reach the
        perturbed top-K), in about half the ops: at V = 64 the candidates are most of the row anyway."""
        x = tempered(logits, self.temperature)
        values, order = x.sort(-1, descending=True)
        row_max = values[:, :1].nan_to_num(0.0, 0.0, 0.0)  # as logsumexp_rows: an infinite max gives no inf - inf
        cum = torch.sub(values, row_max).exp_().cumsum_(-1)
        total = cum[:, -1:]
        lp = values - (row_max + total.log())
        scores = lp + self.noise(lp.shape, generator, lp.device)
        k = min(self.top_k, x.shape[-1])
        if self.top_p < 1.0 and x.shape[-1] > k:  # outside the nucleus (the first k always stay): the mass
            # before the entry reaches top_p
            scores[:, k:].masked_fill_(cum[:, k - 1:-1] >= total * self.top_p, float("-inf"))
        top = torch.topk(scores, k, dim=-1)
        payload = {"ids": order.gather(-1, top.indices), "scores": top.values}
        token = order[:, 0] if self.record == "unperturbed" else payload["ids"][:, 0]
        neg_eps = lp.gather(-1, top.indices) - top.values  # -ε, exactly: gumbel_log_density(ε) = -ε - exp(-ε)
        logprob = neg_eps.sub(neg_eps.exp()).mean(-1)
        return ThoughtStep(embeds=self.rebuild(model, token, payload), token_ids=token, payload=payload,
                           logprob=logprob)

    def _finish(self, model, token: torch.Tensor, payload: Payload, x: torch.Tensor, lse: torch.Tensor) -> ThoughtStep:
        """The step from its payload; its log-prob reuses x and lse (the same bits `log_prob` recomputes)."""
        return ThoughtStep(embeds=self.rebuild(model, token, payload), token_ids=token, payload=payload,
                           logprob=self._score(x, lse, payload))

    @property
    def scores_surrogate(self) -> bool:
        """Whether a step is scored with the authors' surrogate: `logprob="authors"`, or noise scale 0 (no noise
        density to take a likelihood of); else with the exact likelihood."""
        return self.logprob == "authors" or self.noise_scale == 0

    def _score(self, x: torch.Tensor, lse: torch.Tensor, payload: Payload) -> torch.Tensor:
        """(N,) the step's log-prob from the tempered logits x and their logsumexp (no autograd: the rollout): the
        authors' surrogate, or the likelihood (module docstring)."""
        if self.scores_surrogate:
            chosen_lp = x.gather(-1, payload["ids"]) - lse
            return gumbel_log_density(payload["scores"].float() - chosen_lp).mean(-1)
        return self._likelihood_rows(x, None, payload["ids"], payload["scores"], lse)

    def _likelihood_rows(self, lp: torch.Tensor, coef: torch.Tensor | None, ids: torch.Tensor, scores: torch.Tensor,
                         lse: torch.Tensor | None = None) -> torch.Tensor:
        """(n,) the exact likelihood of stored steps (ids, scores) (module docstring) from their log-probs lp (n, V),
        outside autograd; d likelihood / d lp goes into coef (n, V) (a `RowLogprobFn`), unless coef is None. With
        `lse` (n, 1) (the rollout), lp holds the tempered logits instead and lp - lse the log-probs, never formed.

        The competitors are the entries whose draw to reach the K-th score g_K stays below c_max, i.e. whose lp is
        above about g_K - (c_max - shift) s: a prefix of the sorted row. Up to `competitor_sort_limit` of them in
        every row, the prefix is taken with `topk_rows` and everything else is done on it; beyond (a flat
        distribution, a wide noise), with elementwise passes over the whole row (`_dense_competitors`)."""
        s, a, b = self.noise_scale, self.clamp_min, self.clamp_max
        shift = a if self.one_sided else 0.0
        scores = scores.float()
        chosen_lp = lp.gather(-1, ids) if lse is None else lp.gather(-1, ids) - lse
        draw = (scores - chosen_lp) / s + shift  # the Gumbel draw behind each chosen score
        tol = 1e-4 * max(1.0, b - a)
        free = (draw > a + tol) & (draw < b - tol)  # a clamped draw is a point mass that moves with θ: no term
        value = torch.where(free, gumbel_log_density(draw) - math.log(s), 0.0).sum(-1)
        chosen_coef = torch.where(free, (1 - torch.exp(-draw)) / s, 0.0)
        g_k = scores.min(-1, keepdim=True).values
        # every entry with x_j < c_max lies above this bound (a margin for float rounding, lse's included: entries
        # counted in excess are dropped by x_j < c_max below)
        bound = g_k - (b - shift) * s - 1e-3 * max(s, 1.0)
        count = (lp > (bound if lse is None else bound + lse)).sum(-1, dtype=torch.int32)
        m = int(count.max()) if count.numel() else 0
        if m > self.competitor_sort_limit:
            value = value + self._dense_competitors(lp if lse is None else lp - lse, coef, ids, g_k)
        else:
            if coef is not None:
                coef.zero_()
            if m:
                lp_m, order = topk_rows(lp, m)  # the prefix, sorted descending
                if lse is not None:
                    lp_m = lp_m - lse
                x = (g_k - lp_m) / s + shift  # each entry's draw needed to reach the K-th score
                member = (torch.arange(m, device=lp.device) < count[:, None]) & (x < b)
                if self.top_p < 1.0:
                    member &= self._prefix_nucleus(lp_m, ids.shape[-1])
                member &= ~(order[..., None] == ids[:, None, :]).any(-1)  # the chosen are no competitors
                e = torch.exp(-x.clamp_min(a)) * member
                value = value - e.sum(-1)
                if coef is not None:
                    coef.scatter_(-1, order, e.mul_(x >= a).mul_(-1.0 / s))  # d(-exp(-x_j)) / d lp_j
        if coef is not None:
            coef.scatter_add_(-1, ids, chosen_coef)
        return value

    def _dense_competitors(self, lp: torch.Tensor, coef: torch.Tensor | None, ids: torch.Tensor, g_k: torch.Tensor
                           ) -> torch.Tensor:
        """The competitors' part of `_likelihood_rows` with passes over whole rows (many competitors): returns their
        (n,) sum of -exp(-x_j) and writes its gradient in lp into coef (every entry; a scratch tensor if None)."""
        s, a, b = self.noise_scale, self.clamp_min, self.clamp_max
        shift = a if self.one_sided else 0.0
        x = torch.sub(g_k, lp, out=torch.empty_like(lp) if coef is None else coef).div_(s).add_(shift)
        member = x < b  # a prefix of each sorted row
        if self.top_p < 1.0:
            self._nucleus_members(lp, member, ids.shape[-1])
        member.scatter_(-1, ids, False)
        unclamped = x >= a
        e = x.clamp_min_(a).neg_().exp_().mul_(member)  # exp(-max(x_j, c_min)) for the competitors
        total = e.sum(-1)
        e.mul_(unclamped).mul_(-1.0 / s)
        return -total

    def _nucleus_members(self, lp: torch.Tensor, member: torch.Tensor, k: int) -> None:
        """In place: keep in `member` (n, V), a prefix of each descending-sorted row of lp, only its entries in the
        nucleus (the first K always; each further entry while the mass before it is below top_p). The whole prefix
        is in when the mass before its smallest entry is below top_p; the other rows sort their prefix."""
        count = member.sum(-1, dtype=torch.int32)
        mass = lp.exp().mul_(member).sum(-1)
        smallest = torch.where(member, lp, float("inf")).amin(-1).exp()
        rows = ((mass - smallest >= self.top_p) & (count > k)).nonzero().squeeze(-1)
        if rows.numel():
            m = int(count[rows].max())
            values, order = topk_rows(lp[rows], m)  # sorted descending
            keep = self._prefix_nucleus(values, k) & (torch.arange(m, device=lp.device) < count[rows, None])
            member[rows] = torch.zeros_like(member[rows]).scatter_(-1, order, keep)

    def perturbed_topk_pooled(self, logits: torch.Tensor, generator) -> tuple[Payload, torch.Tensor]:
        """`step`'s path at large vocabularies (public for the tests, which shrink `pool_block`/`pool_blocks` to
        reach it at small V). Returns the payload and the unperturbed top-1."""
        payload, best, _ = self._perturbed_topk_pooled(tempered(logits, self.temperature), generator)
        return payload, best

    def _perturbed_topk_pooled(self, x: torch.Tensor, generator) -> tuple[Payload, torch.Tensor, torch.Tensor]:
        """Noise for a pool of ~pool_blocks entries per row instead of the whole vocabulary, same distribution.
        Returns (payload, unperturbed top-1, lse = logsumexp of x).

        Blocks are the strided slices {j, j + n, j + 2n, ...} of the vocabulary (n = V // pool_block: their maxima
        are an element-wise max of pool_block contiguous slices, one fast pass); the tail past pool_block * n is
        always pooled. theta is a cheap estimate of the pool_blocks-th largest block maximum (from every 8th
        block); the pool is every entry with x >= theta (found in the blocks whose maximum reaches theta), so
        every entry outside it has x < theta, and it holds the top-K and every entry above each of its members
        (the nucleus is a prefix cumsum of the sorted pool, as in the sorted path). Its entries get noise and
        the perturbed top-K is taken among them; that is the answer in a row when

        * its K-th score t > fl(theta - lse + noise_max): no entry outside, with any noise, scores t or more; or
        * the pool's mass reaches top_p and its K-th x > theta: no entry outside is in the nucleus mask.

        In the other rows (rare: ~1000 pooled entries leave ~30 noise maxima on a flat distribution) the pool's noise
        is kept, every other entry gets fresh noise, and the sort-free full path runs: the output is then the
        full-noise reference's whatever the pool drew, so the distribution is exactly that of noise on every entry.
        """
        B, V = x.shape
        k = min(self.top_k, V)
        bs = self.pool_block
        n = V // bs
        if x.stride(-1) != 1:
            x = x.contiguous()
        x3 = x.as_strided((B, bs, n), (x.stride(0), n, 1))  # x3[b, r, j] = x[b, j + r * n]: block j = x3[b, :, j]
        block_max = x3.amax(1)
        row_max = block_max.amax(-1, keepdim=True)
        if V > n * bs:
            row_max = torch.maximum(row_max, x[:, n * bs:].amax(-1, keepdim=True))
        lse = logsumexp_rows(x, row_max)  # the max is exact: the same bits as log_normalizer
        sub = block_max[:, ::8]
        theta = torch.topk(sub, min(max(self.pool_blocks // 8, k), sub.shape[-1]), dim=-1).values[:, -1:]
        blocks, block_ok = _pack(block_max >= theta)
        nb = blocks.shape[-1]
        if nb > 8 * max(self.pool_blocks, k):  # many equal logits (e.g. a -inf mask): no gain here
            kth = torch.topk(x, k, dim=-1).values[:, -1:]
            payload = self._perturbed_topk_unsorted(x, lse, kth, self.noise(x.shape, generator, x.device))
            return payload, x.argmax(-1), lse
        vals = x3.gather(2, blocks[:, None, :].expand(B, bs, nb))
        member = (vals >= theta[..., None]) & block_ok[:, None, :]
        vals, member = vals.flatten(1), member.flatten(1)
        if V > n * bs:  # the tail: pooled individually
            vals = torch.cat([vals, x[:, n * bs:]], dim=-1)
            member = torch.cat([member, x[:, n * bs:] >= theta], dim=-1)
        where, real = _pack(member)
        pv = vals.gather(-1, where).masked_fill_(~real, float("-inf"))
        slot, j = where.div(nb, rounding_mode="floor"), where.remainder(nb)
        ids = torch.where(where < bs * nb, blocks.gather(-1, j.clamp_max(nb - 1)) + n * slot, where - bs * nb + n * bs)
        lp = pv - lse
        p = lp.exp()
        mass = p.sum(-1, keepdim=True)
        peaked = self.top_p < 1.0 and bool((mass >= self.top_p).any())
        if peaked:  # the nucleus may end inside the pool: sort it, membership is a prefix cumsum
            lp, order = lp.sort(-1, descending=True)
            ids, p, real = ids.gather(-1, order), p.gather(-1, order), real.gather(-1, order)
            keep = (p.cumsum(-1) - p) < self.top_p  # filter_logits' rule on the pooled prefix
            keep[:, :k] = True
        noise = self.noise(lp.shape, generator, x.device)
        scores = lp + noise
        if peaked:
            scores = scores.masked_fill_(~keep, float("-inf"))
        # else every pooled entry is in the nucleus: the mass before it is below the pool's mass < top_p
        top = torch.topk(scores, k, dim=-1)
        best = ids.gather(-1, lp.argmax(-1, keepdim=True)).squeeze(-1)
        ok = top.values[:, -1:] > (theta - lse) + self.noise_max(x.device)
        if peaked:
            ok |= (mass >= self.top_p) & (lp[:, k - 1: k] > theta - lse)
        payload = {"ids": ids.gather(-1, top.indices), "scores": top.values}
        bad = (~ok).squeeze(-1).nonzero().squeeze(-1)
        if bad.numel():  # those rows only: the pool's noise kept, fresh noise everywhere else, the full path
            full = self.noise((bad.numel(), V), generator, x.device)
            r, c = real[bad].nonzero(as_tuple=True)
            full[r, ids[bad][r, c]] = noise[bad][r, c]
            kth = torch.topk(pv[bad], k, dim=-1).values[:, -1:]
            redo = self._perturbed_topk_unsorted(x[bad], lse[bad], kth, full)
            for key in payload:
                payload[key] = payload[key].index_copy(0, bad, redo[key])
        return payload, best, lse

    def perturbed_topk_unsorted(self, logits: torch.Tensor, generator) -> tuple[Payload, torch.Tensor]:
        """The perturbed top-K when the candidates are too many to sort (a flat distribution over a large
        vocabulary: sorting 32 x 151,936 entries costs ~450 ms on a CPU core).

        Noise goes on every entry; the R = 2K best perturbed scores are taken *ignoring* the nucleus, and only
        those R entries are tested for membership (the probability mass strictly above each, from one bucketed
        pass over the vocabulary). The K best members among them are the answer whenever at least K of the R are
        members (any member outside the R scores below all R); otherwise R doubles. Same distribution as the
        sorted path (checked in tests/test_sampling.py). Returns the payload and the unperturbed top-1."""
        x, top_values, top_ids, _ = self._tempered(logits)
        payload = self._perturbed_topk_unsorted(x, logsumexp_rows(x), top_values[..., -1:],
                                                self.noise(x.shape, generator, x.device))
        return payload, top_ids[:, 0]

    def _perturbed_topk_unsorted(self, x: torch.Tensor, lse: torch.Tensor, kth: torch.Tensor, noise: torch.Tensor
                                 ) -> Payload:
        V = x.shape[-1]
        k = min(self.top_k, V)
        width = (self.clamp_max - self.clamp_min) * self.noise_scale
        scores = (x - lse + noise).masked_fill_(x < kth - width, float("-inf"))
        r = min(2 * k, V)
        while True:
            top = torch.topk(scores, r, dim=-1)
            if self.top_p >= 1.0:
                kept = torch.ones_like(top.values, dtype=torch.bool)
                break
            kept = self.in_nucleus(x, lse, kth, top.indices)
            if bool((kept & top.values.isfinite()).sum(-1).ge(k).all()) or r == V:
                break
            r = min(2 * r, V)
        sel = torch.topk(top.values.masked_fill(~kept, float("-inf")), k, dim=-1)
        return {"ids": top.indices.gather(-1, sel.indices), "scores": sel.values}

    def in_nucleus(self, x: torch.Tensor, lse: torch.Tensor, kth: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B, R) whether entries `ids` of the tempered logits `x` lie in the nucleus that keeps at least K: among
        the top-K by value, or the probability mass strictly above them is below top_p (`filter_logits`' rule)."""
        v = x.gather(-1, ids)
        qs = v.sort(-1).values  # ascending
        bucket = torch.searchsorted(qs, x.contiguous())  # number of query values strictly below each entry
        mass = torch.zeros(x.shape[0], qs.shape[-1] + 1, device=x.device).scatter_add_(-1, bucket, (x - lse).exp())
        at_or_above = mass.flip(-1).cumsum(-1).flip(-1)  # [m] = mass of the entries above qs[m - 1]
        above = at_or_above.gather(-1, torch.searchsorted(qs, v) + 1)  # mass strictly above each query
        return (v >= kth) | (above < self.top_p)

    def weights(self, payload: Payload) -> torch.Tensor:
        """(N, K) mixture weights softmax(g / τ_g) from the stored scores."""
        scores = payload["scores"].float()
        return (scores if self.tau == 1.0 else scores / self.tau).softmax(-1)

    def mixed_tokens(self, payload: Payload) -> tuple[torch.Tensor, torch.Tensor]:
        return payload["ids"], self.weights(payload).float()

    def rebuild(self, model, token_ids: torch.Tensor, payload: Payload) -> torch.Tensor:
        return mix_embeddings(model, payload["ids"], self.weights(payload), self.detach_embeddings)

    def token_logprob_terms(self, token_ids: torch.Tensor, payload: Payload):
        if not self.scores_surrogate:
            return None  # the likelihood reads the whole row: `row_logprob_fn`
        scores = payload["scores"].float()  # the authors' surrogate: the Gumbel density of each chosen score's noise
        return self.temperature, payload["ids"], lambda lp: gumbel_log_density(scores - lp).mean(-1)

    def row_logprob_fn(self, token_ids: torch.Tensor, payload: Payload):
        if self.scores_surrogate:
            return None
        ids, scores = payload["ids"], payload["scores"]
        return self.temperature, lambda lp, coef, rows: self._likelihood_rows(lp, coef, ids[rows], scores[rows])

    def extra_repr(self) -> str:
        return (f"top_k={self.top_k}, top_p={self.top_p}, T={self.temperature}, tau={self.tau}, "
                f"one_sided={self.one_sided}, clamp=[{self.clamp_min}, {self.clamp_max}], "
                f"noise_scale={self.noise_scale}, record={self.record}, logprob={self.logprob}")

