"""`latentrl.cpu_allocator`: glibc's thresholds are set in a fresh process (never in this one: they are
process-wide), and the opt-out leaves them alone."""

import subprocess
import sys

import pytest

CHILD = """
import ctypes, json
from latentrl.cpu_allocator import tune_glibc_malloc
print(json.dumps(tune_glibc_malloc()))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("opt_out, expected", [("1", "true"), ("0", "false")])
def test_the_allocator_is_tuned_on_linux_unless_opted_out(monkeypatch, opt_out, expected):
    monkeypatch.setenv("LATENTRL_MALLOC_TUNING", opt_out)
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == expected
