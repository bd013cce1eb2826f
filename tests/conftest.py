import pytest
import torch

from latentrl.rollout import left_pad
from latentrl.testing import tiny_latent_model

torch.set_num_threads(1)  # shared 2-core machines: intra-op threads contend and slow tiny models 5-10x

WORDS = ["Tom", "is", "a", "cat"]


@pytest.fixture(params=["qwen2", "llama", "gpt2"])
def arch(request):
    return request.param


@pytest.fixture
def tiny(arch):
    return tiny_latent_model(arch, WORDS, seed=0)


def make_prompts(lm, texts=("1 2 3 4 ||", "5 ||", "Tom is a cat ||")):
    return left_pad([lm.tokenizer(t)["input_ids"] for t in texts], lm.tokenizer.pad_token_id)


@pytest.fixture
def prompts(tiny):
    return make_prompts(tiny)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def killed_in_step(monkeypatch):
    """`with killed_in_step(module, n): train(...)`: the training loop in `module` dies (KeyboardInterrupt) inside
    its optimizer step n, after the step's forward and backward and before its update, as a process killed there
    would; the real `optimizer_step` is back once the block ends."""
    import contextlib

    @contextlib.contextmanager
    def kill(module, n: int):
        real, calls = module.optimizer_step, []

        def step(*args, **kw):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(*args, **kw)

        monkeypatch.setattr(module, "optimizer_step", step)
        try:
            with pytest.raises(KeyboardInterrupt):
                yield
        finally:
            monkeypatch.setattr(module, "optimizer_step", real)

    return kill
