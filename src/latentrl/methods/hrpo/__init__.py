"""HRPO (Yue et al. 2025, arXiv 2505.18454; docs/methods/hrpo.md): hybrid latent reasoning through a learned gate.

Where each part lives: `operator.py` forms a hybrid step (the gate, `HRPOGateThought`), `method.py` holds the method
and its two ablations (`hrpo_raw_hidden`, `hrpo_no_gate`: the hooks, the span rule, the gate's parameter groups),
`config.py` the `hrpo.*` options. Importing this package registers all three and mounts the section.
"""

from latentrl.methods.hrpo.config import HRPOConfig
from latentrl.methods.hrpo.method import HRPO, HRPONoGate, HRPORawHidden, gate_metrics
from latentrl.methods.hrpo.operator import GATE_NAME, HRPOGate, HRPOGateThought, ensure_gate, projected_state

__all__ = ["GATE_NAME", "HRPO", "HRPOConfig", "HRPOGate", "HRPOGateThought", "HRPONoGate", "HRPORawHidden",
           "ensure_gate", "gate_metrics", "projected_state"]
