"""timbrelab.cpu: the pin acts in a fresh process before torch loads, owns up when it comes too late, and the
fingerprint describes the code paths really in use."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from timbrelab import cpu

PIN_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_CBWR", "NPY_DISABLE_CPU_FEATURES",
            cpu.DISABLE_VAR)


def python(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in PIN_VARS}
    return subprocess.run([sys.executable, "-W", "error", "-c", code], env={**clean, **env}, capture_output=True,
                          text=True, check=True)


SHOW = "import json, sys, os; print(json.dumps([torch.backends.cpu.get_cpu_capability(), timbrelab.cpu.pin_state(), " \
       "{v: os.environ.get(v) for v in ('ATEN_CPU_CAPABILITY', 'ONEDNN_MAX_CPU_ISA', 'MKL_CBWR')}]))"


def test_pin_sets_the_capability_before_torch_loads():
    planned = cpu.planned_settings()
    capability, state, env = json.loads(python("import timbrelab, torch; " + SHOW).stdout)
    assert state["state"] == "applied" and state["env"] == planned and state["preset"] == state["late"] == []
    if planned:
        assert capability == planned["ATEN_CPU_CAPABILITY"].upper()
        assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2"


def test_a_value_in_the_environment_wins():
    capability, state, _ = json.loads(python("import timbrelab, torch; " + SHOW, ATEN_CPU_CAPABILITY="default").stdout)
    if cpu.planned_settings():
        assert capability == "DEFAULT" and state["preset"] == ["ATEN_CPU_CAPABILITY"]
        assert state["env"]["ATEN_CPU_CAPABILITY"] == "default"


def test_a_pin_after_torch_says_so_and_sets_nothing():
    _, state, env = json.loads(python("import torch, timbrelab; " + SHOW).stdout)
    assert state == {"state": "too_late", "env": {}, "preset": [], "late": []}
    assert env == {"ATEN_CPU_CAPABILITY": None, "ONEDNN_MAX_CPU_ISA": None, "MKL_CBWR": None}


def test_the_pin_can_be_switched_off():
    _, state, env = json.loads(python("import timbrelab, torch; " + SHOW, TIMBRELAB_CPU_PIN="0").stdout)
    assert state["state"] == "disabled" and env["ATEN_CPU_CAPABILITY"] is None


def _info(vendor: str, flags: str) -> dict:
    return {"vendor": vendor, "model_name": "x", "family": "6", "model": "1", "flags": set(flags.split())}


@pytest.mark.parametrize(("vendor", "flags", "expected"), [
    ("GenuineIntel", "sse4_2 avx fma avx2 avx512f avx512bw",
     {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2",
      "NPY_DISABLE_CPU_FEATURES": cpu.NUMPY_ABOVE_AVX2}),
    # MKL does not honour an ISA branch on AMD (it reports CNR:AUTO): no MKL_CBWR there.
    ("AuthenticAMD", "sse4_2 avx fma avx2 avx512f",
     {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "NPY_DISABLE_CPU_FEATURES": cpu.NUMPY_ABOVE_AVX2}),
    ("AuthenticAMD", "sse4_2 avx fma avx2", {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}),
    ("GenuineIntel", "sse4_2 avx", {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "AVX2"}),
])
def test_planned_settings(vendor, flags, expected):
    assert cpu.planned_settings(_info(vendor, flags), "x86_64") == expected


def test_nothing_is_pinned_off_x86():
    assert cpu.planned_settings(_info("", "asimd sve"), "aarch64") == {}


def test_cpuinfo_reads_the_first_processor(tmp_path):
    text = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC 9B14\n"
            "flags\t\t: fpu avx avx2 fma avx512f\n\nprocessor\t: 1\nvendor_id\t: Other\n")
    (tmp_path / "cpuinfo").write_text(text)
    info = cpu.cpuinfo(tmp_path / "cpuinfo")
    assert (info["vendor"], info["model_name"], info["family"], info["model"]) == ("AuthenticAMD", "AMD EPYC 9B14",
                                                                                   "25", "17")
    assert {"avx2", "avx512f"} <= info["flags"]


def test_write_fingerprint_from_the_command_line(tmp_path):
    target = tmp_path / "dvc.lock.cpu.json"
    clean = {k: v for k, v in os.environ.items() if k not in PIN_VARS}
    done = subprocess.run([sys.executable, "-W", "error", "-m", "timbrelab.cpu", "--write", str(target)], env=clean,
                          capture_output=True, text=True, check=True)
    assert done.stderr == ""          # in particular no runpy warning about timbrelab.cpu
    record = json.loads(target.read_text())
    assert set(cpu.MATCH_FIELDS) <= set(record)
    assert record["pin"]["state"] == "applied"
    assert record["torch_capability"] == python("import timbrelab, torch; " + SHOW).stdout.split('"')[1]
    assert isinstance(record["num_threads"], int) and record["num_threads"] >= 1
    if record["mkl_version"]:          # MKL's own report (through torch's library): OFF unless the pin set it
        assert record["mkl_cbwr"] == record["pin"]["env"].get("MKL_CBWR", "OFF")


def test_numpy_accepts_the_pinned_dispatch_names():
    """The names the pin gives NPY_DISABLE_CPU_FEATURES are ones this numpy dispatches (else it warns at import,
    an error under -W error); on a CPU with AVX-512 they leave numpy at its AVX2 level."""
    done = python("import numpy; from timbrelab.cpu import numpy_code_path; print(numpy_code_path()['numpy_simd'])",
                  NPY_DISABLE_CPU_FEATURES=cpu.NUMPY_ABOVE_AVX2)
    assert not any(name in done.stdout.split() for name in cpu.NUMPY_ABOVE_AVX2.split())
