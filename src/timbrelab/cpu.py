"""Pin the CPU code paths that torch's libraries let a process choose, and describe the CPU a result came from.

Bitwise-equal training across CPU types is not something the stack offers (measured, DESIGN.md): torch's
bundled MKL ignores ``MKL_CBWR=AVX2`` / ``AVX512`` on AMD (it reports ``CNR:AUTO``; only ``COMPATIBLE``
applies there, and it makes a large sgemm about 3x slower), and oneDNN's kernels depend on the ISA. What a
process *can* fix, it fixes here, before torch is imported (``timbrelab/__init__.py`` calls :func:`pin`
first thing, so every ``python -m timbrelab.stages.X`` and console script is pinned):

* ``ATEN_CPU_CAPABILITY``: torch's own vectorised kernels (``avx2`` where the CPU has AVX2 + FMA, else
  ``default``), so an AVX-512 machine runs the same ATen code as an AVX2-only one. Honoured: a fresh process
  reports it through ``torch.backends.cpu.get_cpu_capability()``.
* ``ONEDNN_MAX_CPU_ISA=AVX2``: the cap on oneDNN's JIT kernels (convolutions). Honoured: ``ONEDNN_VERBOSE=1``
  shows ``isa:Intel AVX2`` / ``jit:avx2`` (and ``jit:sse41`` under ``SSE41``). It is a cap, not a floor, and
  oneDNN still sizes its blocking from the cache sizes, so it narrows, not removes, the differences.
* ``MKL_CBWR`` (conditional numerical reproducibility): ``AVX2`` on Intel CPUs, where MKL honours it; on other
  vendors nothing (MKL maps every ISA branch to ``AUTO`` there, and ``COMPATIBLE``, the one branch it
  honours, costs too much: see ``benchmarks/cpu_pinning.py``).
* ``NPY_DISABLE_CPU_FEATURES``: numpy's runtime SIMD dispatch, capped at its AVX2 level (``X86_V3``) on CPUs
  with AVX-512. The data stages need it: numpy's dispatch level changes the features stage's log-CQT (measured
  on an AVX2 machine by disabling ``X86_V3``: the CQT of each of 4 clips tried changed, f0 and loudness did
  not), and an unpinned features stage on an AVX2-only AMD EPYC did not reproduce the hash an Intel Xeon
  made. Set only for numpy >= 2.4, whose dispatch names these are (numpy warns about a name it does not
  dispatch), and not where numpy is already imported (listed under ``late``).

Values already in the environment win (``os.environ.setdefault``). ``TIMBRELAB_CPU_PIN=0`` turns the pin off
(for speed); a pin that runs after torch was imported sets nothing and says so (``state: too_late``).
:func:`fingerprint` describes this process's CPU and code paths (what ``dvc.lock.cpu.json`` holds, written by
``python -m timbrelab.cpu --write dvc.lock.cpu.json`` after ``dvc repro``); trained outputs are compared byte
for byte only between equal fingerprints (``tests/lockcheck.py``).

No torch import at module level: this module runs before torch may be imported.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from pathlib import Path
from typing import Any

DISABLE_VAR = "TIMBRELAB_CPU_PIN"
# The flags that decide which kernels torch, oneDNN and MKL pick (the rest of /proc/cpuinfo's list varies
# with the hypervisor and does not change arithmetic).
ISA_FLAGS = ("sse4_2", "avx", "fma", "avx2", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16")
# Fingerprint fields that decide whether two machines' trained outputs may be compared byte for byte.
MATCH_FIELDS = ("cpu_vendor", "cpu_model_name", "cpu_family", "cpu_model", "torch_version", "torch_capability",
                "onednn_max_cpu_isa", "mkl_cbwr", "numpy_simd", "num_threads")
# numpy (>= 2.4) dispatch targets above the AVX2 level (its __cpu_dispatch__ is X86_V3, X86_V4, AVX512_ICL,
# AVX512_SPR over an X86_V2 baseline).
NUMPY_ABOVE_AVX2 = "X86_V4 AVX512_ICL AVX512_SPR"
# mkl_cbwr.h: the MKL_CBWR_* branch values and the STRICT flag.
_CBWR_NAMES = {0: "OFF", 1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1", 8: "SSE4_2",
               9: "AVX", 10: "AVX2", 11: "AVX512_MIC", 12: "AVX512", 13: "AVX512_MIC_E1", 14: "AVX512_E1"}
_CBWR_STRICT = 0x10000

_STATE: dict[str, Any] = {"state": "not_called", "env": {}, "preset": [], "late": []}


def cpuinfo(path: str | os.PathLike = "/proc/cpuinfo") -> dict[str, Any]:
    """The first processor's vendor, model name, family, model and ISA flags from /proc/cpuinfo (empty
    values where the file is missing, e.g. not Linux)."""
    fields: dict[str, str] = {}
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break   # the first processor is enough
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {"vendor": fields.get("vendor_id", ""), "model_name": fields.get("model name", platform.processor()),
            "family": fields.get("cpu family", ""), "model": fields.get("model", ""),
            "flags": flags}


def planned_settings(info: dict[str, Any] | None = None, machine: str | None = None) -> dict[str, str]:
    """What :func:`pin` would set on a CPU described by ``info`` (:func:`cpuinfo`): nothing off x86-64."""
    info = cpuinfo() if info is None else info
    machine = (platform.machine() if machine is None else machine).lower()
    if machine not in ("x86_64", "amd64") or not info["flags"]:
        return {}
    has_avx2 = {"avx2", "fma"} <= info["flags"]
    settings = {"ATEN_CPU_CAPABILITY": "avx2" if has_avx2 else "default", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    if info["vendor"] == "GenuineIntel" and has_avx2:
        settings["MKL_CBWR"] = "AVX2"
    if "avx512f" in info["flags"] and _numpy_version() >= (2, 4):
        settings["NPY_DISABLE_CPU_FEATURES"] = NUMPY_ABOVE_AVX2
    return settings


def _numpy_version() -> tuple[int, int]:
    """The installed numpy's (major, minor), read from its metadata (importing numpy here would be too early
    for NPY_DISABLE_CPU_FEATURES); (0, 0) where unknown."""
    from importlib import metadata

    try:
        major, minor = metadata.version("numpy").split(".")[:2]
        return int(major), int(minor)
    except (metadata.PackageNotFoundError, ValueError):
        return 0, 0


def pin() -> dict[str, Any]:
    """Set, with ``os.environ.setdefault``, each library's CPU code path (module doc) before torch loads.

    Returns (and remembers, for :func:`fingerprint`) ``{"state": "applied" | "disabled" | "too_late",
    "env": {var: value in effect}, "preset": [vars the environment had already set], "late": [vars not set
    because their library was already imported]}``. Idempotent: a second call returns the first call's record.
    """
    if _STATE["state"] != "not_called":
        return pin_state()
    if os.environ.get(DISABLE_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        _STATE["state"] = "disabled"
    elif "torch" in sys.modules:
        # Setting the variables now would not change this process (its libraries may have read them) but
        # would change its children: set nothing, and say so.
        _STATE["state"] = "too_late"
    else:
        settings = planned_settings()
        if "numpy" in sys.modules and "NPY_DISABLE_CPU_FEATURES" in settings:
            del settings["NPY_DISABLE_CPU_FEATURES"]
            _STATE["late"] = ["NPY_DISABLE_CPU_FEATURES"]
        _STATE["preset"] = sorted(var for var in settings if var in os.environ)
        _STATE["env"] = {var: os.environ.setdefault(var, value) for var, value in settings.items()}
        _STATE["state"] = "applied"
    return pin_state()


def pin_state() -> dict[str, Any]:
    return {"state": _STATE["state"], "env": dict(_STATE["env"]), "preset": list(_STATE["preset"]),
            "late": list(_STATE["late"])}


def _torch_cpu_library():
    """torch's libtorch_cpu (which holds its MKL), or None where it cannot be opened (not Linux, a
    different build)."""
    import torch

    path = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        return ctypes.CDLL(str(path)) if path.is_file() else None
    except OSError:
        return None


def mkl_code_path() -> dict[str, Any]:
    """What MKL itself reports: its version, its CBWR branch (``OFF`` = unset, ``AUTO`` = chosen per CPU,
    ``COMPATIBLE``, an ISA name; ``,STRICT`` appended) and whether it took its Intel dispatch. Falls back to
    the ``MKL_CBWR`` variable (``env:<value>``) where the library's symbols are not reachable."""
    lib = _torch_cpu_library()
    fallback = {"mkl_version": "", "mkl_cbwr": f"env:{os.environ.get('MKL_CBWR', 'unset')}", "mkl_intel_dispatch": None}
    try:
        get = lib.mkl_serv_cbwr_get
        intel = lib.mkl_serv_intel_cpu
    except (AttributeError, TypeError):
        return fallback
    get.argtypes, get.restype = [ctypes.c_int], ctypes.c_int
    intel.argtypes, intel.restype = [], ctypes.c_int
    value = get(-1)   # MKL_CBWR_ALL: the branch plus the STRICT flag
    name = _CBWR_NAMES.get(value & 0xFFFF, f"branch_{value & 0xFFFF}")
    if value & _CBWR_STRICT:
        name += ",STRICT"
    version = ""
    try:
        buf = ctypes.create_string_buffer(256)
        lib.MKL_Get_Version_String(buf, len(buf))
        version = buf.value.decode(errors="replace").strip()
    except AttributeError:
        pass
    return {"mkl_version": version, "mkl_cbwr": name, "mkl_intel_dispatch": bool(intel())}


def numpy_code_path() -> dict[str, Any]:
    """numpy's version and the SIMD dispatch targets it uses on this CPU (``numpy_simd``; its baseline where it
    dispatches nothing above it)."""
    import numpy as np

    try:
        from numpy._core import _multiarray_umath as umath
    except ImportError:   # numpy 1.x
        from numpy.core import _multiarray_umath as umath
    enabled = [name for name in getattr(umath, "__cpu_dispatch__", []) if umath.__cpu_features__.get(name)]
    return {"numpy_version": np.__version__,
            "numpy_simd": " ".join(enabled) or "baseline " + " ".join(getattr(umath, "__cpu_baseline__", []))}


def fingerprint() -> dict[str, Any]:
    """This process's CPU and numeric code paths, as plain JSON values (see :data:`MATCH_FIELDS` for the
    fields that decide byte-for-byte comparability). Imports torch."""
    import torch

    info = cpuinfo()
    record = {
        "cpu_vendor": info["vendor"],
        "cpu_model_name": info["model_name"],
        "cpu_family": info["family"],
        "cpu_model": info["model"],
        "cpu_isa": sorted(flag for flag in ISA_FLAGS if flag in info["flags"]),
        "machine": platform.machine(),
        "torch_version": torch.__version__,
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "unset")),
        **mkl_code_path(),
        **numpy_code_path(),
        "num_threads": torch.get_num_threads(),
        "pin": pin_state(),
    }
    return record


def write_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Write :func:`fingerprint` as canonical JSON to ``path`` (atomically); returns it."""
    from timbrelab.fsutil import atomic_write_json

    record = fingerprint()
    atomic_write_json(path, record)
    return record


def main(argv: list[str] | None = None) -> int:
    """``python -m timbrelab.cpu [--write PATH]``: print this machine's fingerprint, or write it to PATH."""
    import argparse

    from timbrelab.fsutil import dumps_json

    parser = argparse.ArgumentParser(prog="python -m timbrelab.cpu", description=main.__doc__)
    parser.add_argument("--write", metavar="PATH", help="write the fingerprint here (e.g. dvc.lock.cpu.json)")
    args = parser.parse_args(argv)
    record = write_fingerprint(args.write) if args.write else fingerprint()
    sys.stdout.write(dumps_json(record) if not args.write else f"wrote {args.write}\n")
    return 0


if __name__ == "__main__":
    # Run the package's copy of this module (timbrelab/__init__ imported it and pinned through it), not
    # this __main__ copy, whose pin record was never set.
    import importlib

    raise SystemExit(importlib.import_module("timbrelab.cpu").main())
