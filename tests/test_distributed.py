"""Data-parallel training equals the single-process run with the same global batch (2 CPU processes, gloo), with
full replicas (parallelism='ddp') and with FSDP2 sharding (parallelism='fsdp').

Global batch 12 completions = 3 groups of 4; process 0 trains on rows 0-5 and process 1 on rows 6-11, so the middle
group spans both processes. Same rollout_chunk_size on both sides, so the same completions are drawn; the update
differs only in summation order (process slices, gradient all-reduce or reduce-scatter).
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import distributed_worker as worker
import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
RUNS = ("grpo", "hrpo")
#: bf16 runs get a launch of their own: one process group keeps one mixed-precision setting (accelerate state)
BF16_RUNS = ("grpo_bf16",)


#: wall-clock limit of one launch; an unloaded 2-core machine needs 45-60 s per launch, one shared with another
#: job several times that (measured: up to 200 s with two busy processes beside it)
LAUNCH_TIMEOUT_S = 1200


def launch(out: Path, parallelism: str, runs: tuple[str, ...] = RUNS) -> subprocess.Popen:
    """2 gloo processes running tests/distributed_worker.py (every run of `runs`) into `out`; their output goes to
    `out`.log.

    `--standalone`: torchrun binds its rendezvous store to a free port itself and keeps it, where a port picked
    here and released before torchrun starts (seconds later on a loaded machine) can be taken meanwhile. The
    launch gets its own session so that a timed-out launch is killed with all its workers."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),
           "OMP_NUM_THREADS": "1", "LATENTRL_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "distributed_worker.py"), str(out), parallelism, *runs]
    with open(log_path(out), "w") as log:  # a file, not a pipe: the workers never block on a full pipe
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def log_path(out: Path) -> Path:
    return out.with_name(out.name + ".log")


def finish(proc: subprocess.Popen, out: Path, runs: tuple[str, ...] = RUNS) -> dict[str, list[dict]]:
    """Wait for a launch and load what each rank wrote; on failure the whole launch log (both ranks' output and
    torchrun's summary with each failed rank's traceback) is the failure message."""
    try:
        proc.wait(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
        proc.wait()
        pytest.fail(f"the 2-process launch into {out} ran over {LAUNCH_TIMEOUT_S} s and was killed; its whole "
                    f"log:\n{log_path(out).read_text(errors='replace')}", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"the 2-process launch into {out} exited with {proc.returncode}; its whole log:\n"
                    f"{log_path(out).read_text(errors='replace')}", pytrace=False)
    return {name: [torch.load(out / f"{name}-rank{k}.pt") for k in range(2)] for name in runs}


#: supervised runs: full replicas only (the SFT loops have no FSDP)
SFT_RUNS = ("coconut", "cot", "superposition")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The single-process reference, the 2-process ddp runs and the 2-process fsdp runs (and their folders)."""
    out = tmp_path_factory.mktemp("dp")
    proc = launch(out / "ddp", "ddp", RUNS + SFT_RUNS)
    try:  # the single-process reference runs here meanwhile
        ref = {name: worker.run(name, out / "single", world=1) for name in RUNS + BF16_RUNS + SFT_RUNS}
    finally:
        dp = finish(proc, out / "ddp", RUNS + SFT_RUNS)
    fsdp = finish(launch(out / "fsdp", "fsdp"), out / "fsdp")
    fsdp.update(finish(launch(out / "fsdp_bf16", "fsdp", BF16_RUNS), out / "fsdp_bf16", BF16_RUNS))
    return {"single": ref, "ddp": dp, "fsdp": fsdp, "out": out}


def assert_adam_weights_close(actual: torch.Tensor, expected: torch.Tensor, lr: float) -> None:
    """Weights after a few Adam steps from gradients that differ only in summation order (~1e-9).

    Adam divides each gradient element by its own running scale, so these differences reach the weights as ~1e-6,
    except at an element whose gradient is itself near zero: there the normalised update is ill-conditioned and
    can move by a fraction of the learning rate (seen: 3e-5 at 1 of 21,920 elements of the FSDP HRPO run on an AMD
    EPYC core; under 2e-5 on the machines before). So: at most 1 element in 1,000 beyond 2e-5 (+ 1e-4 relative),
    and every element within lr / 10.
    """
    assert actual.shape == expected.shape
    diff = (actual - expected).abs()
    loose = diff > 2e-5 + 1e-4 * expected.abs()
    assert int(loose.sum()) <= max(1, expected.numel() // 1000), (
        f"{int(loose.sum())} of {expected.numel()} weights differ by more than 2e-5 (largest {float(diff.max()):.3g})")
    assert float(diff.max()) <= lr / 10, f"largest weight difference {float(diff.max()):.3g} > lr / 10"


@pytest.mark.parametrize("name,parallelism", [(n, p) for n in RUNS for p in ("ddp", "fsdp")] +
                         [(n, "fsdp") for n in BF16_RUNS])
def test_two_processes_equal_one_process(runs, name, parallelism):
    ref, dp = runs["single"][name], runs[parallelism]
    assert ref["world"] == 1
    for k, res in enumerate(dp[name]):
        assert res["world"] == 2 and res["rank"] == k
        assert len(res["metrics"]) == len(ref["metrics"]) == worker.RUNS[name].get("max_steps", 2)
        for m_dp, m_ref in zip(res["metrics"], ref["metrics"]):
            assert m_dp.keys() == m_ref.keys()
            assert m_dp["reward"] == m_ref["reward"]  # identical completions
            full = m_ref.get("dynamic_sampling/kept_groups", 3) == 3
            for key in m_ref:
                # kl / entropy are row-weighted means of micro-batch token means (as in TRL), so they are only
                # comparable when both runs cut the batch into the same micro-batches (a full batch: 3+3 | 3+3)
                if key in ("kl", "entropy") and not full:
                    continue
                assert m_dp[key] == pytest.approx(m_ref[key], rel=1e-3, abs=1e-6), key
        assert ref["metrics"][0]["grad_norm"] > 0
        assert_adam_weights_close(res["params"], ref["params"], lr=1e-2)
    # both replicas hold exactly the same weights (under FSDP: gathered from the same shards)
    assert torch.equal(dp[name][0]["params"], dp[name][1]["params"])


def test_two_process_coconut_sft_equals_one_process(runs):
    """Coconut SFT over 2 processes (each trains half of the step's micro-batches, the gradients are summed) equals
    one process with the same global batch: same losses, gate decisions and weights; only the main process wrote
    the checkpoints and metrics.jsonl."""
    from latentrl.checkpoint import list_checkpoints
    from latentrl.logger import read_metrics

    ref = runs["single"]["coconut"]
    assert ref["world"] == 1 and len(ref["metrics"]) == 6  # 3 stages x 2 steps
    for k, res in enumerate(runs["ddp"]["coconut"]):
        assert res["world"] == 2 and res["rank"] == k
        assert res["stage_log"] == ref["stage_log"]
        for m_dp, m_ref in zip(res["metrics"], ref["metrics"], strict=True):
            assert m_dp.keys() == m_ref.keys() and m_dp["step"] == m_ref["step"]
            for key in m_ref:
                assert m_dp[key] == pytest.approx(m_ref[key], rel=1e-4, abs=1e-6), key
        # Adam (lr 1e-2, 6 steps) turns summation-order differences of near-zero gradients into up to ~1e-4 in a
        # few weights (measured: 1 of 19,776 at 9.2e-5); a wrong normaliser or a missing share moves every weight
        torch.testing.assert_close(res["params"], ref["params"], atol=2e-4, rtol=1e-4)
    assert torch.equal(runs["ddp"]["coconut"][0]["params"], runs["ddp"]["coconut"][1]["params"])
    folder = runs["out"] / "ddp" / "coconut"
    # steps 2 and 4 end stages: saved at the next stage's start; step 6 ends the run
    assert [p.name for p in list_checkpoints(folder)] == ["checkpoint-4", "checkpoint-5"]
    logged = [r for r in read_metrics(folder) if "loss" in r]
    assert [r["step"] for r in logged] == list(range(1, 7))  # once, not once per process


@pytest.mark.parametrize("name", ["cot", "superposition"])
def test_two_process_step_sft_equals_one_process(runs, name):
    """CoT and superposition SFT over 2 processes (each trains half of the global batch, the losses normalised by
    the whole batch's counts, the gradients summed) equal one process with the same global batch: same logged
    metrics and weights; only the main process wrote the checkpoints and metrics.jsonl."""
    from latentrl.checkpoint import list_checkpoints
    from latentrl.logger import read_metrics

    ref = runs["single"][name]
    assert ref["world"] == 1 and len(ref["metrics"]) == 3
    for k, res in enumerate(runs["ddp"][name]):
        assert res["world"] == 2 and res["rank"] == k
        for m_dp, m_ref in zip(res["metrics"], ref["metrics"], strict=True):
            assert m_dp.keys() == m_ref.keys() and m_dp["step"] == m_ref["step"]
            for key in m_ref:
                assert m_dp[key] == pytest.approx(m_ref[key], rel=1e-4, abs=1e-6), key
        torch.testing.assert_close(res["params"], ref["params"], atol=2e-4, rtol=1e-4)
    assert torch.equal(runs["ddp"][name][0]["params"], runs["ddp"][name][1]["params"])
    folder = runs["out"] / "ddp" / name
    assert [p.name for p in list_checkpoints(folder)] == ["checkpoint-2", "checkpoint-3"]
    assert [r["step"] for r in read_metrics(folder) if "loss" in r] == [1, 2, 3]  # once, not once per process


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_two_process_resume_equals_uninterrupted(runs, parallelism):
    ref, dp = runs["single"], runs[parallelism]
    for res in dp["grpo"]:
        torch.testing.assert_close(res["resumed_params"], res["params"], atol=0, rtol=0)
    torch.testing.assert_close(ref["grpo"]["resumed_params"], ref["grpo"]["params"], atol=0, rtol=0)


def test_fsdp_shards_parameters(runs):
    """Under FSDP each process holds about half of every decoder-layer parameter (dim-0 shards) and of the
    embeddings; the full replicas of ddp hold everything."""
    for res in runs["fsdp"]["hrpo"]:
        shards = res["shards"]
        layer = {n: v for n, v in shards.items() if ".layers.0." in n}
        assert len(layer) >= 7  # q/k/v/o, MLP, norms
        held, full = sum(v[0] for v in layer.values()), sum(v[1] for v in layer.values())
        assert abs(held - full / 2) <= 0.05 * full, (held, full)
        emb_held, emb_full = shards["model.model.embed_tokens.weight"]
        assert emb_held < emb_full
        assert any("hrpo_gate" in n for n in shards)  # the side module is sharded too
    total = [sum(v[0] for v in res["shards"].values()) for res in runs["fsdp"]["hrpo"]]
    full = sum(v[1] for v in runs["fsdp"]["hrpo"][0]["shards"].values())
    assert sum(total) == full  # the shards partition the model: nothing duplicated, nothing missing
    assert all(v[0] == v[1] for v in runs["ddp"]["hrpo"][0]["shards"].values())


def test_fsdp_checkpoint_has_single_process_format(runs):
    """An FSDP checkpoint holds the same files, keys and (up to float rounding) values as the 1-process one."""
    single = runs["out"] / "single" / "grpo" / "resumed" / "checkpoint-1"
    fsdp = runs["out"] / "fsdp" / "grpo" / "resumed" / "checkpoint-1"
    assert sorted(p.name for p in single.iterdir()) == sorted(p.name for p in fsdp.iterdir())
    w1, w2 = load_file(str(single / "model.safetensors")), load_file(str(fsdp / "model.safetensors"))
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=2e-5, rtol=1e-4)
    o1 = torch.load(single / "optimizer.pt", weights_only=True)
    o2 = torch.load(fsdp / "optimizer.pt", weights_only=True)
    assert o1["param_groups"] == o2["param_groups"]
    assert o1["state"].keys() == o2["state"].keys()
    for i, st in o1["state"].items():
        assert st.keys() == o2["state"][i].keys()
        for name, v in st.items():
            torch.testing.assert_close(o2["state"][i][name], v, atol=2e-5, rtol=1e-3)


def test_fsdp_checkpoint_resumes_in_one_process(runs, tmp_path):
    """Step 1 trained and saved under FSDP (2 processes), step 2 resumed in 1 process == 2 steps in 1 process."""
    import shutil

    half = tmp_path / "half"
    half.mkdir()
    shutil.copytree(runs["out"] / "fsdp" / "grpo" / "resumed" / "checkpoint-1", half / "checkpoint-1")
    resumed = worker.resume("grpo", runs["out"], 1, "ddp", half)
    torch.testing.assert_close(resumed, runs["single"]["grpo"]["params"], atol=2e-5, rtol=1e-4)


def test_fsdp_refuses_what_it_cannot_shard(runs):
    """LoRA, method dlr and latent_rl's first-step value-head pretraining stop with a ConfigError naming ddp."""
    for k in range(2):
        msgs = torch.load(runs["out"] / "fsdp" / f"refusals-rank{k}.pt")
        assert "does not support LoRA" in msgs["lora"] and "parallelism='ddp'" in msgs["lora"]
        assert "does not support method 'dlr'" in msgs["dlr"] and "parallelism='ddp'" in msgs["dlr"]
        assert "pretrain_prompts=0" in msgs["latent_rl"] and "parallelism='ddp'" in msgs["latent_rl"]


def test_bf16_run_computes_in_bf16(runs):
    """The bf16 run's step 1 (same completions as the fp32 grpo run) really ran under bf16 autocast."""
    fp32, bf16 = runs["single"]["grpo"]["metrics"][0], runs["single"]["grpo_bf16"]["metrics"][0]
    assert bf16["reward"] == fp32["reward"]
    assert bf16["grad_norm"] != pytest.approx(fp32["grad_norm"], rel=1e-5)  # fp32 reruns are bit-equal; bf16 differs ~1e-4


def test_a_failed_launch_reports_its_whole_log(tmp_path):
    """A rank that fails: the failure message is the launch's whole log (not a tail), and torchrun's closing
    summary names the root cause (the worker is wrapped in `record`)."""
    out = tmp_path / "bad"
    with pytest.raises(pytest.fail.Exception) as info:
        finish(launch(out, "ddp", ("no_such_run",)), out, ("no_such_run",))
    log = log_path(out).read_text(errors="replace")
    msg = str(info.value)
    assert msg.endswith(log) and "exited with 1" in msg
    summary = log[log.index("Root Cause"):]
    assert "KeyError: 'no_such_run'" in summary  # the cause, at the end of the log where it cannot be cut off
