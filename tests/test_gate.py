"""The curriculum gate (`latentrl.sft.gate.StageGate`) on hand-made metric sequences."""

from __future__ import annotations

import math

import pytest

from latentrl.sft.gate import StageGate


def run(gate: StageGate, values: list[float], every: int = 10) -> tuple[int | None, str | None, int]:
    """Feed one value per evaluation (every `every` steps); the step at which the gate advances, why, its streak."""
    gate.start_stage()
    for i, v in enumerate(values, start=1):
        d = gate.update(i * every, v)
        if d.advance:
            return i * every, d.reason, d.streak
    return None, None, gate.streak


def test_plateau_then_jump_advances_after_patience_evals():
    # ln 10 plateau, then the drop: accuracy 0.1 for a while, 0.95 from the 6th eval on
    acc = [0.1, 0.12, 0.1, 0.11, 0.5, 0.95, 0.97, 0.99]
    assert run(StageGate(threshold=0.9, patience=2), acc) == (70, "converged", 2)
    assert run(StageGate(threshold=0.9, patience=1), acc) == (60, "converged", 1)
    assert run(StageGate(threshold=0.9, patience=3), acc) == (80, "converged", 3)


def test_a_dip_resets_the_streak():
    acc = [0.95, 0.5, 0.95, 0.96]
    assert run(StageGate(threshold=0.9, patience=2), acc) == (40, "converged", 2)


def test_loss_gate_passes_below_the_threshold():
    loss = [2.30, 2.31, 2.29, 0.8, 0.05, 0.04]
    assert run(StageGate(threshold=0.1, patience=2, higher_is_better=False), loss) == (60, "converged", 2)


def test_step_cap_advances_an_unlearned_stage_and_min_steps_holds_a_learned_one():
    flat = [0.1] * 10
    assert run(StageGate(threshold=0.9, patience=2, max_steps=50), flat) == (50, "max_steps", 0)
    assert run(StageGate(threshold=0.9, patience=2), flat) == (None, None, 0)
    # passes from the start, but not before 40 steps
    assert run(StageGate(threshold=0.9, patience=1, min_steps=40), [1.0] * 10) == (40, "converged", 4)


def test_nan_never_passes_and_start_stage_forgets():
    g = StageGate(threshold=0.5, patience=2)
    assert not g.update(1, math.nan).passed
    assert g.update(2, 0.9).streak == 1
    g.start_stage()
    assert g.streak == 0 and not g.update(3, 0.9).advance


@pytest.mark.parametrize("kw", [{"patience": 0}, {"max_steps": 0}, {"min_steps": -1}, {"threshold": math.nan}])
def test_bad_options_are_clear_errors(kw):
    kw.setdefault("threshold", 0.9)
    with pytest.raises(ValueError):
        StageGate(**kw)
