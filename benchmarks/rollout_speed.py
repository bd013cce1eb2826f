"""Rollout throughput: HF `model.generate` vs. our discrete and latent `generate_rollout`, on one model and batch.

Six modes are measured on the same random-weight model, batch and prompts:

* ``generate``      HF ``model.generate``: sampling at T=1 (no top-k/top-p), KV cache, eos disabled so every row
                    produces exactly ``--new`` tokens.
* ``discrete``      ``generate_rollout`` without an operator, same sampling, stop ids that never fire.
* ``soft_mixture``  ``generate_rollout`` with the ``soft_mixture`` operator and ``ThinkingSchedule(num_latent_steps=N)``:
                    every one of the N positions is latent.  This is the headline latent figure (``latent_pos_s``).
* ``hidden_state``  the same with the ``hidden_state`` (Coconut) operator.
* ``gumbel_softmax`` the same with LEPO's ``gumbel_softmax`` operator (defaults: top-k 30, top-p 0.95, tau 0.5).
* ``gumbel_topk``   the same with Latent-GRPO's ``gumbel_topk`` operator (defaults: top-k 30, top-p 0.95, one-sided noise).
* ``hrpo_gate``     the same with HRPO's ``hrpo_gate`` operator (a sampled token gated with the projected state).

``--decoder`` picks the rollout engine's decode path (``auto``: the preallocated-cache fast path of
``latentrl.decoding`` where the architecture supports it; ``generic``: ``LatentModel.forward_embeds`` with a
``DynamicCache``), so both paths can be compared against ``generate``.

Timing (default ``--timing interleaved``): one process builds the model, warms every mode up (``--warmup`` runs), then
times ``--repeats`` rounds of all modes round-robin, so background load on a shared machine hits all modes alike.
Throughput = batch * new / median time (prefill included, as in a real rollout).  Peak memory: each mode runs once
more (1 warmup + 1 run) in a FRESH subprocess, so modes do not contaminate each other.  ``*_peak_mb`` is that
process's peak resident memory while decoding (the kernel's high-water mark is reset after the model is built, then
read from VmHWM; this is ``ru_maxrss`` restricted to the decode phase, and falls back to plain ``ru_maxrss`` where
/proc is missing).  The table also shows ``rss0`` (resident before the first decode: imports + model), the decode
increase ``+decode`` and the whole-process ``ru_maxrss`` (model build included). ``--memory-rounds N`` runs N such
processes per mode (modes alternating) and reports the highest peak (``*_peak_mb``) and the median
(``peak_mb_median``): one process's peak varies by up to ~100 MB at V = 151,936 from run to run.
``--timing subprocess`` times each mode inside its own memory subprocess instead.

The last line printed is one JSON object (see benchmarks/README.md).  Examples::

    python benchmarks/rollout_speed.py                         # tiny Qwen2 on CPU, batch 32, 64 new positions
    python benchmarks/rollout_speed.py --preset qwen2.5-0.5b --device cuda --dtype bfloat16 --batch 64 --new 256
    python benchmarks/rollout_speed.py --mode soft_mixture --profile cprofile   # one mode in-process, profiled
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import model_presets
from model_presets import add_shape_args

MODES = ("generate", "discrete", "soft_mixture", "hidden_state", "gumbel_softmax", "gumbel_topk", "hrpo_gate")
LATENT_MODES = MODES[2:]


REAL_VOCAB = 151_936  # Qwen2 / Qwen2.5's vocabulary: where full-vocabulary sampling work dominates a decode step


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Tokens/s and peak memory of HF generate vs. latentrl generate_rollout (discrete and latent).",
        epilog="The last line printed is a JSON object; see benchmarks/README.md for its keys.",
    )
    add_shape_args(p, vocab_help="model vocab (default 64: a word tokenizer of 61 words + 3 latent tokens); a larger "
                                  "vocab keeps the small tokenizer and samples prompt ids over the whole vocab")
    p.add_argument("--batch", type=int, default=32, help="rows per decode (default 32)")
    p.add_argument("--prompt-len", type=int, default=16, help="longest prompt (default 16); rows are 75-100%% of it, left-padded")
    p.add_argument("--new", type=int, default=64, help="new positions per row, tokens or latent positions (default 64)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per mode, median reported (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per mode before timing (default 2)")
    p.add_argument("--timing", choices=("interleaved", "subprocess"), default="interleaved",
                   help="interleaved (default): time all modes round-robin in one process on one model (robust to background "
                        "load; memory still measured per mode in fresh subprocesses); subprocess: time each mode "
                        "inside its own memory subprocess")
    p.add_argument("--memory-rounds", type=int, default=1,
                   help="with --timing interleaved: fresh memory subprocesses per mode (modes alternate round by round; "
                        "default 1). One process's decode peak varies by up to ~100 MB at V = 151,936 from run to run "
                        "(glibc's heap layout differs with the address-space randomisation); the table then shows the "
                        "highest and the median peak, the JSON every sample")
    p.add_argument("--rounds", type=int, default=1,
                   help="with --timing subprocess: passes over all modes (fresh subprocesses each), median over all "
                        "(default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads. Default on cpu: 1 - the default shapes gain nothing from intra-op "
                        "threads, and OpenMP spin-waiting makes multi-thread timings collapse when other processes "
                        "share the cores. 0 = torch's own default")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="default float32")
    p.add_argument("--attn", default=None, help="attn_implementation (sdpa, eager, ...; default: transformers' choice)")
    p.add_argument("--decoder", choices=("auto", "fast", "generic"), default="auto",
                   help="generate_rollout's decode path: auto (default: the fast path where supported), fast, generic")
    p.add_argument("--soft-top-k", type=int, default=10, help="top_k of the soft_mixture operator (default 10)")
    add_gumbel_args(p)
    p.add_argument("--seed", type=int, default=0, help="model weights and prompts (default 0)")
    p.add_argument("--logit-scale", type=float, default=1.0,
                   help="multiply the LM head's weights by this (default 1: the random model's nearly flat "
                        "next-token distribution, the worst case for candidate-restricted sampling). A trained model "
                        "is peaked: e.g. 15 gives a mean top-1 probability ~0.6 at V = 151,936 (the table's header "
                        "reports the mean top-1 probability at the prompts' last position). The LM head gets its own scaled copy, "
                        "so a tied model's input embeddings stay as they are")
    p.add_argument("--real-vocab", type=int, default=REAL_VOCAB,
                   help=f"after the main table, the same modes at this vocabulary (default {REAL_VOCAB:,}, Qwen2's), "
                        "--new <= 16 and --repeats <= 2, reported under the JSON key 'real_vocab'; 0 = skip. Skipped "
                        "when --vocab-size is given")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES) + " (default: all)")
    p.add_argument("--mode", choices=MODES, default=None,
                   help="run ONE mode in this process (no subprocess, no table); prints its result JSON. "
                        "Use with --profile or under `python -m cProfile`.")
    p.add_argument("--profile", choices=("breakdown", "cprofile", "torch"), default=None,
                   help="with --mode: profile the timed runs. breakdown: wall time per decode step split into model "
                        "forward (HF mask creation, rotary, LM head, rest) / sampling / thought operator / loop "
                        "bookkeeping; cprofile, torch: the top entries of those profilers")
    p.add_argument("--profile-top", type=int, default=40, help="rows of profile output (default 40)")
    args = p.parse_args(argv)
    resolve_shape(args)
    if args.profile and not args.mode:
        p.error("--profile needs --mode MODE")
    if args.memory_rounds < 1 or args.rounds < 1:
        p.error("--memory-rounds and --rounds must be >= 1")
    return args


def add_gumbel_args(p: argparse.ArgumentParser) -> None:
    """Latent-GRPO's operator settings (mode gumbel_topk); scaling.py takes them too."""
    p.add_argument("--gumbel-logprob", choices=("authors", "likelihood"), default="authors",
                   help="gumbel_topk's log-prob: the authors' surrogate (default) or the exact likelihood")
    p.add_argument("--gumbel-noise-scale", type=float, default=1.0, help="gumbel_topk's noise scale (default 1.0)")


def resolve_shape(args: argparse.Namespace) -> None:
    model_presets.resolve_shape(args, min_positions=args.prompt_len + args.new + 8)
    if args.threads is None and not str(args.device).startswith("cuda"):
        args.threads = 1


def config_dict(args: argparse.Namespace) -> dict:
    keys = ("preset", "arch", "hidden", "layers", "heads", "kv_heads", "intermediate", "vocab_size", "batch",
            "prompt_len", "new", "repeats", "warmup", "timing", "rounds", "threads", "device", "dtype", "attn", "decoder",
            "soft_top_k", "gumbel_logprob", "gumbel_noise_scale",
            "seed", "logit_scale")
    return {k: getattr(args, k) for k in keys}


# ---------------------------------------------------------------------------------------------------- model & data
def build(args: argparse.Namespace):
    """(LatentModel, prompt_ids, prompt_mask) - deterministic in --seed, identical in every mode's subprocess."""
    import torch
    from transformers import AutoModelForCausalLM

    from latentrl.model import LatentModel
    from latentrl.rollout import left_pad
    from latentrl.tokenizer import build_word_tokenizer

    n_words = model_presets.word_tokenizer_words(min(args.vocab_size, 64) - 3)  # room for 3 latent tokens
    tok = build_word_tokenizer([f"w{i}" for i in range(n_words)])
    vocab = max(args.vocab_size, len(tok) + 3)
    cfg = model_presets.hf_config(args, vocab, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    kw = {"attn_implementation": args.attn} if args.attn else {}
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, **kw)
    model.to(args.device).eval()
    if args.logit_scale != 1.0:  # the LM head gets its own scaled copy (tied or not): the inputs stay as they were
        head = model.get_output_embeddings()
        head.weight = torch.nn.Parameter(head.weight.detach() * args.logit_scale, requires_grad=False)
        model.config.tie_word_embeddings = False
    lm = LatentModel(model, tok)
    lm.add_latent_tokens(init_from="<<")  # ids inside the model vocab: no resize

    g = torch.Generator().manual_seed(args.seed + 1)
    lo, hi = 4, vocab  # skip pad/unk/bos/eos
    lengths = torch.randint(max(1, (3 * args.prompt_len) // 4), args.prompt_len + 1, (args.batch,), generator=g)
    lengths[0] = args.prompt_len
    prompts = [torch.randint(lo, hi, (int(n),), generator=g).tolist() for n in lengths]
    ids, mask = left_pad(prompts, tok.pad_token_id, device=args.device)
    return lm, ids, mask


def make_runner(args: argparse.Namespace, mode: str, lm, ids, mask):
    """A zero-argument callable that does one full batch decode of mode `mode` and checks its length."""
    import torch
    from transformers import GenerationConfig

    from latentrl.rollout import SamplingParams, ThinkingSchedule, generate_rollout
    from latentrl.thoughts import build_thought_operator

    B, N = args.batch, args.new
    gen = torch.Generator(device=lm.device).manual_seed(args.seed + 2)

    if mode == "generate":
        model = lm.model
        model.generation_config.eos_token_id = None  # every row runs the full N tokens
        gcfg = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=N,
                                min_new_tokens=0, use_cache=True, eos_token_id=None,
                                pad_token_id=lm.tokenizer.pad_token_id, bos_token_id=lm.tokenizer.bos_token_id)

        def run():
            torch.manual_seed(args.seed + 2)
            out = model.generate(input_ids=ids, attention_mask=mask.long(), generation_config=gcfg)
            if out.shape != (B, ids.shape[1] + N):
                raise RuntimeError(f"generate produced {tuple(out.shape)}, expected {(B, ids.shape[1] + N)}")
        return run

    sampling = SamplingParams(max_new_positions=N, temperature=1.0, stop_token_ids=[-1])  # -1: never sampled
    if mode == "discrete":
        operator, schedule = None, None
    else:
        kw = {"top_k": args.soft_top_k} if mode == "soft_mixture" else {}
        if mode == "gumbel_topk":
            kw = {"logprob": args.gumbel_logprob, "noise_scale": args.gumbel_noise_scale}
        operator = build_thought_operator(mode, **kw)
        schedule = ThinkingSchedule(num_latent_steps=N)
        operator.attach(lm)  # side modules (HRPO's gate) exist before any rollout

    def run():
        r = generate_rollout(lm, ids, mask, sampling, operator=operator, schedule=schedule, generator=gen,
                             decoder=args.decoder)
        if r.completion_ids.shape != (B, N) or not bool(r.completion_mask.all()):
            raise RuntimeError(f"{mode}: rollout produced {tuple(r.completion_ids.shape)} / incomplete rows")
        if operator is not None and not bool(r.latent_mask.all()):
            raise RuntimeError(f"{mode}: not every position was latent")
    run.operator = operator
    return run


def mean_top1_prob(args: argparse.Namespace) -> float:
    """Mean over the batch of the largest next-token probability at the prompts' last position: how peaked the
    benchmark model's distribution is (a random model's is nearly flat; see --logit-scale)."""
    import torch

    lm, ids, mask = build(args)
    with torch.no_grad():
        logits = lm.model(input_ids=ids, attention_mask=mask.long()).logits[:, -1].float()
    return float(logits.softmax(-1).amax(-1).mean())


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def maxrss_mb() -> float:
    """Peak resident memory of this process since it started (imports and model build included)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 2**20 if sys.platform == "darwin" else kb / 2**10  # bytes on macOS, KiB on Linux


def reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark (Linux >= 4.0: `echo 5 > /proc/self/clear_refs`)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Resident high-water mark (VmHWM) since the last `reset_peak_rss`; ru_maxrss where /proc is unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        pass
    return maxrss_mb()


def _sync(args) -> None:
    import torch

    if str(args.device).startswith("cuda"):
        torch.cuda.synchronize()


def _timed(args, run) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one run.

    CPU time (all threads of this process) is not inflated by time spent descheduled, so on a loaded machine it is
    the steadier figure; with several threads it also counts OpenMP spin-waiting.
    """
    _sync(args)
    t0, c0 = time.perf_counter(), time.process_time()
    run()
    _sync(args)
    return time.perf_counter() - t0, time.process_time() - c0


class Breakdown:
    """Wall-clock attribution of one decode loop by wrapping its pieces (no source edits; timing wrappers only).

    forward      = the decoder: the rollout's `DecoderStepper.prefill/step` (fast or generic path, see
                   latentrl.decoding) or the HF CausalLM forward (generate, LM head included); inside it:
      mask       = transformers' create_causal_mask (2D padding mask -> 4D mask; the fast path calls it only at prefill)
      rotary     = the backbone's rotary embedding module (the fast path calls it once per rollout)
    lm_head      = the LM head (rollout only, outside the decoder)
    sampling     = latentrl.sampling.sample_tokens (rollout); for generate, everything outside forward
    operator     = ThoughtOperator.step
    bookkeeping  = the rest of generate_rollout (buffers, schedule, masks, where/cat, .any()/.all() checks)
    """

    def __init__(self, args, mode, lm, operator):
        import importlib

        self.args, self.mode, self.t = args, mode, {}
        self.cuda = str(args.device).startswith("cuda")
        self._undo = []
        backbone = lm.backbone()
        mod = importlib.import_module(type(backbone).__module__)
        if hasattr(mod, "create_causal_mask"):
            self._patch(mod, "create_causal_mask", "mask")
        if hasattr(backbone, "rotary_emb"):
            self._patch(backbone.rotary_emb, "forward", "rotary")
        if mode == "generate":
            self._patch(lm.model, "forward", "forward")
        else:
            import latentrl.decoding as decoding
            import latentrl.rollout as rollout_mod

            for cls in (decoding.StaticCacheStepper, decoding.CachedForwardStepper):
                self._patch(cls, "prefill", "forward")
                self._patch(cls, "step", "forward")
            self._patch(lm, "lm_head", "lm_head")
            self._patch(rollout_mod, "sample_tokens", "sampling")
            if operator is not None:
                self._patch(operator, "step", "operator")

    def _patch(self, obj, name, key):
        orig = getattr(obj, name)
        had_own = name in vars(obj)
        clock = self._clock

        def wrapper(*a, **kw):
            t0 = clock()
            try:
                return orig(*a, **kw)
            finally:
                self.t[key] = self.t.get(key, 0.0) + clock() - t0

        setattr(obj, name, wrapper)
        self._undo.append((obj, name, orig, had_own))

    def _clock(self):
        if self.cuda:
            import torch
            torch.cuda.synchronize()
        return time.perf_counter()

    def reset(self):
        self.t = {}

    def restore(self):
        for obj, name, orig, had_own in reversed(self._undo):
            if had_own:
                setattr(obj, name, orig)
            else:
                delattr(obj, name)

    def report(self, total_s: float, runs: int) -> dict:
        steps = runs * self.args.new  # forwards = prefill + (new - 1) decode steps per run
        t = dict(self.t)
        fwd = t.get("forward", 0.0)
        parts = {
            "forward: mask creation": t.get("mask", 0.0),
            "forward: rotary": t.get("rotary", 0.0),
            "forward: rest (layers)": fwd - t.get("mask", 0.0) - t.get("rotary", 0.0),
        }
        if self.mode == "generate":
            parts["generate loop (sampling, processors, kwargs)"] = total_s - fwd
        else:
            outside = {"lm_head": t.get("lm_head", 0.0), "sampling (sample_tokens)": t.get("sampling", 0.0),
                       "operator.step": t.get("operator", 0.0)}
            parts.update(outside)
            parts["bookkeeping (rest of generate_rollout)"] = total_s - fwd - sum(outside.values())
        print(f"\n==== breakdown of {runs} timed run(s), mode={self.mode}: "
              f"{1e3 * total_s / steps:.3f} ms per position ====")
        print(f"{'part':<48}{'ms/step':>10}{'share':>8}")
        print(f"{'forward (total)':<48}{1e3 * fwd / steps:>10.3f}{100 * fwd / total_s:>7.1f}%")
        for name, v in parts.items():
            print(f"{name:<48}{1e3 * v / steps:>10.3f}{100 * v / total_s:>7.1f}%")
        return {k: round(1e3 * v / steps, 4) for k, v in {"forward": fwd, **parts}.items()}


def run_mode(args: argparse.Namespace, mode: str) -> dict:
    """One mode in this process: build, warm up, time `--repeats` runs, report peak memory.

    This is what each fresh subprocess of the driver runs (memory, and timing with `--timing subprocess`).
    """
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = str(args.device).startswith("cuda")
    lm, ids, mask = build(args)
    run = make_runner(args, mode, lm, ids, mask)
    breakdown = None
    if args.profile == "breakdown":
        breakdown = Breakdown(args, mode, lm, getattr(run, "operator", None))
    _sync(args)
    gc.collect()
    rss_before = current_rss_mb()
    peak_reset = reset_peak_rss()  # so the peak below is the decoding peak, not the model build's
    for _ in range(args.warmup):
        run()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    profiler = None
    if breakdown is not None:
        breakdown.reset()
    if args.profile == "cprofile":
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    elif args.profile == "torch":
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        profiler = profile(activities=acts, record_shapes=False)
        profiler.__enter__()

    times = [_timed(args, run) for _ in range(args.repeats)]

    if breakdown is not None:
        breakdown.report(sum(w for w, _ in times), len(times))
        breakdown.restore()
    if args.profile == "cprofile":
        import pstats
        profiler.disable()
        for key in ("cumulative", "tottime"):
            print(f"\n==== cProfile of {args.repeats} timed run(s), mode={mode}, sorted by {key} ====")
            pstats.Stats(profiler).sort_stats(key).print_stats(args.profile_top)
    elif args.profile == "torch":
        profiler.__exit__(None, None, None)
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(f"\n==== torch.profiler of {args.repeats} timed run(s), mode={mode} ====")
        print(profiler.key_averages().table(sort_by=key, row_limit=args.profile_top))

    out = {
        "mode": mode,
        "times_s": times,
        "positions": args.batch * args.new,
        "rss_before_mb": round(rss_before, 1),
        "peak_mb": round(peak_rss_mb() if peak_reset else maxrss_mb(), 1),
        "maxrss_mb": round(maxrss_mb(), 1),
        "threads": torch.get_num_threads(),
    }
    if cuda:
        out["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def time_interleaved(args: argparse.Namespace, modes: list[str]) -> dict[str, list[tuple[float, float]]]:
    """Time all modes in THIS process on one model, round-robin (A B C D A B C D ...), after warming each up.

    On a shared machine the background load then hits every mode alike, so the ratios stay meaningful even
    when the absolute numbers move.
    """
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    lm, ids, mask = build(args)
    runners = {m: make_runner(args, m, lm, ids, mask) for m in modes}
    for m in modes:
        for _ in range(args.warmup):
            runners[m]()
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    for i in range(args.repeats):
        order = modes if i % 2 == 0 else modes[::-1]  # alternate the order: no mode always runs first
        for m in order:
            times[m].append(_timed(args, runners[m]))
    return times


# ---------------------------------------------------------------------------------------------------- driver
def worker_argv(args: argparse.Namespace, mode: str, **override) -> list[str]:
    argv = [sys.executable, os.path.abspath(__file__), "--mode", mode]
    for key, val in {**config_dict(args), **override}.items():
        if key in ("rounds", "timing") or val is None:
            continue
        argv += [f"--{key.replace('_', '-')}", str(val)]
    return argv


def run_subprocess(args: argparse.Namespace, mode: str, **override) -> dict:
    proc = subprocess.run(worker_argv(args, mode, **override), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"mode {mode!r} failed (exit {proc.returncode})")
    lines = proc.stdout.strip().splitlines()
    if lines:
        try:
            res = json.loads(lines[-1])  # a --mode run's last line is its result
            if isinstance(res, dict) and res.get("mode") == mode:
                return res
        except json.JSONDecodeError:
            pass
    sys.stderr.write(proc.stdout + proc.stderr)
    raise SystemExit(f"mode {mode!r} printed no result")


def summarize(args: argparse.Namespace, times: dict[str, list[tuple[float, float]]], mem: dict[str, list[dict]]) -> dict:
    rows = {}
    for mode, pairs in times.items():
        ts = [w for w, _ in pairs]
        med = statistics.median(ts)
        cpu = statistics.median(c for _, c in pairs)
        parts = mem[mode]
        rows[mode] = {
            "median_s": med,
            "min_s": min(ts),
            "max_s": max(ts),
            "runs": len(ts),
            "per_s": args.batch * args.new / med,
            "ms_per_step": 1e3 * med / args.new,
            "cpu_s": cpu,
            "cpu_per_s": args.batch * args.new / cpu,
            "cpu_ms_per_step": 1e3 * cpu / args.new,
            "rss_before_mb": max(p["rss_before_mb"] for p in parts),
            "peak_mb": max(p["peak_mb"] for p in parts),
            "peak_mb_median": statistics.median(p["peak_mb"] for p in parts),
            "peak_mb_samples": [p["peak_mb"] for p in parts],
            "maxrss_mb": max(p["maxrss_mb"] for p in parts),
            "gpu_peak_mb": max((p.get("gpu_peak_mb", 0.0) for p in parts), default=0.0),
            "threads": parts[0]["threads"],
        }
    return rows


def print_table(args: argparse.Namespace, rows: dict, loadavg: list[float]) -> None:
    cfg = config_dict(args)
    print(f"rollout_speed: arch={cfg['arch']} hidden={cfg['hidden']} layers={cfg['layers']} heads={cfg['heads']}/"
          f"{cfg['kv_heads']}kv mlp={cfg['intermediate']} vocab={cfg['vocab_size']} | batch={cfg['batch']} "
          f"prompt<={cfg['prompt_len']} new={cfg['new']} | {cfg['device']} {cfg['dtype']} "
          f"threads={next(iter(rows.values()))['threads']} | {cfg['warmup']} warmup + {cfg['repeats']} runs"
          f" ({cfg['timing']}" + (f", {cfg['rounds']} rounds)" if cfg['timing'] == "subprocess" else ")")
          + f" | load avg {loadavg[0]:.1f} -> {loadavg[1]:.1f} on {os.cpu_count()} cpus")
    gen = rows.get("generate")
    unit = {"generate": "tok/s", "discrete": "tok/s", **{m: "pos/s" for m in LATENT_MODES}}
    gpu = any(r["gpu_peak_mb"] for r in rows.values())
    cpu_cols = not gpu
    samples = max(len(r["peak_mb_samples"]) for r in rows.values())
    med_col = samples > 1  # several memory processes per mode: the median peak beside the highest
    head = (f"{'mode':<15}{'median s':>9}{'min s':>8}{'max s':>8}{'ms/step':>9}{'per s':>9}{'':>6}{'vs gen':>8}"
            + (f"{'cpu ms/st':>10}{'cpu vs gen':>11}" if cpu_cols else "")
            + f"{'rss0 MB':>9}{'peak MB':>9}" + (f"{'med of ' + str(samples):>11}" if med_col else "")
            + f"{'+decode':>9}{'maxrss':>8}" + (f"{'gpu MB':>9}" if gpu else ""))
    print(head)
    print("-" * len(head))
    for mode, r in rows.items():
        ratio = f"{r['per_s'] / gen['per_s']:.2f}x" if gen else "-"
        cratio = f"{r['cpu_per_s'] / gen['cpu_per_s']:.2f}x" if gen else "-"
        print(f"{mode:<15}{r['median_s']:>9.3f}{r['min_s']:>8.3f}{r['max_s']:>8.3f}{r['ms_per_step']:>9.2f}"
              f"{r['per_s']:>9.0f}{unit[mode]:>6}{ratio:>8}"
              + (f"{r['cpu_ms_per_step']:>10.2f}{cratio:>11}" if cpu_cols else "")
              + f"{r['rss_before_mb']:>9.0f}{r['peak_mb']:>9.0f}" + (f"{r['peak_mb_median']:>11.0f}" if med_col else "")
              + f"{r['peak_mb'] - r['rss_before_mb']:>9.0f}"
              f"{r['maxrss_mb']:>8.0f}" + (f"{r['gpu_peak_mb']:>9.0f}" if gpu else ""))


def final_json(args: argparse.Namespace, rows: dict, loadavg: list[float]) -> dict:
    def get(mode, key):
        return round(rows[mode][key], 3) if mode in rows else None

    def ratio(mode, key="per_s"):
        if mode in rows and "generate" in rows:
            return round(rows[mode][key] / rows["generate"][key], 3)
        return None

    cfg = config_dict(args)
    cfg["threads"] = next(iter(rows.values()))["threads"]
    out = {
        "generate_tok_s": get("generate", "per_s"),
        "discrete_tok_s": get("discrete", "per_s"),
        "latent_pos_s": get("soft_mixture", "per_s"),
        "hidden_state_pos_s": get("hidden_state", "per_s"),
        "discrete_vs_generate": ratio("discrete"),
        "latent_vs_generate": ratio("soft_mixture"),
        "hidden_state_vs_generate": ratio("hidden_state"),
        "generate_peak_mb": get("generate", "peak_mb"),
        "discrete_peak_mb": get("discrete", "peak_mb"),
        "latent_peak_mb": get("soft_mixture", "peak_mb"),
        "hidden_state_peak_mb": get("hidden_state", "peak_mb"),
        "gumbel_softmax_pos_s": get("gumbel_softmax", "per_s"),
        "hrpo_gate_pos_s": get("hrpo_gate", "per_s"),
        "gumbel_softmax_vs_generate": ratio("gumbel_softmax"),
        "hrpo_gate_vs_generate": ratio("hrpo_gate"),
        "gumbel_softmax_peak_mb": get("gumbel_softmax", "peak_mb"),
        "hrpo_gate_peak_mb": get("hrpo_gate", "peak_mb"),
        "maxrss_mb": {m: r["maxrss_mb"] for m, r in rows.items()},
        "decode_rss_mb": {m: round(r["peak_mb"] - r["rss_before_mb"], 1) for m, r in rows.items()},
        "peak_mb_median": {m: round(r["peak_mb_median"], 1) for m, r in rows.items()},
        "peak_mb_samples": {m: r["peak_mb_samples"] for m, r in rows.items()},
    }
    if str(args.device).startswith("cuda"):
        for mode, key in (("generate", "generate"), ("discrete", "discrete"), ("soft_mixture", "latent"),
                          ("hidden_state", "hidden_state"), ("gumbel_softmax", "gumbel_softmax"),
                          ("hrpo_gate", "hrpo_gate")):
            out[f"{key}_gpu_peak_mb"] = get(mode, "gpu_peak_mb")
    else:  # the same ratios from process CPU time (steadier than wall time on a loaded machine)
        out["discrete_vs_generate_cpu"] = ratio("discrete", "cpu_per_s")
        out["latent_vs_generate_cpu"] = ratio("soft_mixture", "cpu_per_s")
        out["hidden_state_vs_generate_cpu"] = ratio("hidden_state", "cpu_per_s")
        out["gumbel_softmax_vs_generate_cpu"] = ratio("gumbel_softmax", "cpu_per_s")
        out["hrpo_gate_vs_generate_cpu"] = ratio("hrpo_gate", "cpu_per_s")
    out["vs_generate"] = {m: ratio(m) for m in rows}  # every mode, gumbel_topk included
    out["ms_per_step"] = {m: round(r["ms_per_step"], 3) for m, r in rows.items()}
    out["loadavg"] = [round(x, 2) for x in loadavg]
    out["config"] = cfg
    return out


def main(argv=None) -> dict | None:
    from latentrl.cpu_allocator import tune_glibc_malloc

    tune_glibc_malloc()  # for `generate` and ours alike, in this process and in every mode's subprocess
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.mode:
        res = run_mode(args, args.mode)
        print(json.dumps(res))
        return None
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"unknown mode(s) {bad}; allowed: {MODES}")
    load0 = os.getloadavg()[0]
    mem: dict[str, list[dict]] = {m: [] for m in modes}
    if args.timing == "subprocess":
        times: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
        for r in range(args.rounds):
            for mode in modes:
                print(f"[round {r + 1}/{args.rounds}] {mode} ...", file=sys.stderr, flush=True)
                res = run_subprocess(args, mode)
                mem[mode].append(res)
                times[mode] += [tuple(x) for x in res["times_s"]]
    else:
        for r in range(args.memory_rounds):  # peak memory: one warmup + one run, each mode in a fresh process
            for mode in modes:
                print(f"[memory {r + 1}/{args.memory_rounds}] {mode} ...", file=sys.stderr, flush=True)
                mem[mode].append(run_subprocess(args, mode, warmup=1, repeats=1))
        print(f"[timing] {', '.join(modes)} interleaved ...", file=sys.stderr, flush=True)
        times = time_interleaved(args, modes)
    rows = summarize(args, times, mem)
    loadavg = [load0, os.getloadavg()[0]]
    print_table(args, rows, loadavg)
    out = final_json(args, rows, loadavg)
    out["mean_top1_prob"] = round(mean_top1_prob(args), 6)
    print(f"mean top-1 probability at the prompts' last position: {out['mean_top1_prob']:.4g} "
          f"(--logit-scale {args.logit_scale:g})")
    if args.real_vocab and not args.preset and "--vocab-size" not in argv and not any(a.startswith("--vocab-size=") for a in argv):
        print(json.dumps(out))  # the main shape's result, before the real-vocabulary run
        print(f"\n[real vocabulary] the same modes at V = {args.real_vocab:,}", file=sys.stderr, flush=True)
        out["real_vocab"] = main(argv + ["--vocab-size", str(args.real_vocab), "--new", str(min(args.new, 16)),
                                         "--repeats", str(min(args.repeats, 2))])
        print(json.dumps(out))
        return out
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
