"""A killed stage's temporary siblings (issue #19, item 7): the next run of the same output removes what
a dead run left, and never what a live concurrent run is writing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from timbrelab.fsutil import atomic_dir, atomic_path

# A child that starts writing `target` (a folder, or a file with atomic_path), says so, then waits for a
# line on stdin: "kill" makes it die on the spot (SIGKILL, like an OOM kill), "finish" completes the write.
_CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from timbrelab.fsutil import atomic_dir, atomic_path
    target, kind = Path(sys.argv[1]), sys.argv[2]
    with (atomic_dir(target) if kind == "dir" else atomic_path(target)) as tmp:
        if kind == "dir":
            (tmp / "half.bin").write_bytes(b"x" * 1000)
        else:
            tmp.write_bytes(b"x" * 1000)
        print(tmp, flush=True)
        if sys.stdin.readline().strip() == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
    print("done", flush=True)
""")


def _start(target: Path, kind: str) -> tuple[subprocess.Popen, Path]:
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(target), kind], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    tmp = Path(child.stdout.readline().strip())
    assert tmp.exists() and tmp.parent == target.parent
    return child, tmp


def _leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


def test_a_rerun_removes_the_folder_a_killed_run_left(tmp_path):
    target = tmp_path / "prepared"
    child, tmp = _start(target, "dir")
    child.communicate("kill\n")
    assert child.returncode != 0 and tmp.exists()  # the dead run's half-written folder
    with atomic_dir(target) as new:
        (new / "ok").write_text("1")
    assert (target / "ok").read_text() == "1"
    assert _leftovers(target) == []


def test_a_rerun_removes_the_file_a_killed_run_left(tmp_path):
    target = tmp_path / "stats.json"
    child, tmp = _start(target, "file")
    child.communicate("kill\n")
    assert tmp.exists()
    with atomic_path(target) as new:
        new.write_text("{}")
    assert target.read_text() == "{}"
    assert _leftovers(target) == []


def test_a_live_concurrent_run_keeps_its_temporary_folder_and_file(tmp_path):
    for kind, target in (("dir", tmp_path / "features"), ("file", tmp_path / "index.json")):
        child, tmp = _start(target, kind)
        try:
            if kind == "dir":
                with atomic_dir(target) as new:
                    (new / "mine").write_text("1")
            else:
                with atomic_path(target) as new:
                    new.write_text("mine")
            assert tmp.exists(), f"removed the {kind} a live run is writing"
        finally:
            out, _ = child.communicate("finish\n")
        assert child.returncode == 0 and out.strip().endswith("done")
        assert _leftovers(target) == []


def test_other_outputs_leftovers_are_not_touched(tmp_path):
    """Only siblings of the same output: a dead run of another output is that output's rerun's business."""
    child, tmp = _start(tmp_path / "other", "dir")
    child.communicate("kill\n")
    with atomic_dir(tmp_path / "prepared") as new:
        (new / "ok").write_text("1")
    assert tmp.exists()
