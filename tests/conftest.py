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
