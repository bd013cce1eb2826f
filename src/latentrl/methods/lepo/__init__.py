"""LEPO (Zhou et al. 2026; docs/methods/lepo.md): Gumbel-softmax latents scored by one unified gradient.

`operator.py` forms a latent step (`gumbel_softmax`) and scores it, `method.py` holds the method. LEPO has no
options of its own beyond `latent.*`.
"""

from latentrl.methods.lepo.method import DEFAULT_NUM_LATENT_STEPS, LEPO
from latentrl.methods.lepo.operator import GumbelSoftmaxThought, soft_cross_entropy_logprob

__all__ = ["DEFAULT_NUM_LATENT_STEPS", "LEPO", "GumbelSoftmaxThought", "soft_cross_entropy_logprob"]
