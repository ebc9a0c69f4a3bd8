"""Benchmark of the features stage (prints markdown tables; record them in BENCHMARKS.md).

All in a fresh temporary copy of the repository (``tests/conftest.py::copy_repository``), after
``dvc repro prepare`` with the default (demo) profile; speeds are seconds of audio per wall second.

1. Warm, in-process, one call per 4 s prepared clip: ``log_cqt``, ``estimate_f0`` (swift, pyin),
   ``a_weighted_loudness`` (the frame hop, 64) and the whole ``clip_features``, over >= 10 minutes of
   clips taken evenly from every domain and split (pyin, ~1x real time, over exactly 60 s: 15 clips
   of the source glides). One warm-up call is made first, so numba compilation and the ONNX model
   load are left out. swift runs with one ONNX thread, as in a stage worker (and once with
   onnxruntime's default thread count). Next to each f0 estimator: its accuracy on the source glides'
   known f0 (the ``.f0.csv`` truth beside each prepared wav): RPA (truly-voiced frames within 50
   cents), median |cents|, voicing recall and false alarm at the config's
   ``features.pitch.voiced_threshold``; both estimators on the same 60 s.
2. Cold one-off costs, each in a fresh interpreter on one 4 s clip: first ``log_cqt`` with an empty
   numba cache (``NUMBA_CACHE_DIR`` set to a new directory) and with the normal one; first swift call
   (ONNX model load); first pyin call. Cold cost = first call minus second call.
3. The whole stage: ``dvc repro features`` (the config's worker count) -> audio seconds per wall
   second, from outside and from the stage's MLflow metric ``stage_seconds``.
4. Memory against the number of files: ``extract_split`` + ``split_statistics`` in a fresh interpreter
   on ``data/prepared/nsynth/train`` listed once and four times (distinct ids, same wav files), 2
   workers: peak RSS of the process (``RUSAGE_SELF``) and of its largest worker
   (``RUSAGE_CHILDREN``), and, sampled every 20 ms from ``/proc``, the peak anonymous memory
   (``RssAnon``) against the file-backed pages of the memory-mapped outputs (``RssFile``).

Usage: .venv/bin/python benchmarks/features_stage.py   (about 3-4 minutes on 2 cores)
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

from conftest import copy_repository, tool_env
from data_stages import stage_seconds, timed

POOL_SECONDS = 600.0  # warm measurements: at least 10 minutes of audio
PYIN_SECONDS = 60.0
CENTS_OK = 50.0


# ------------------------------------------------------------------------------------------ clips


def load_cfg(repo: Path):
    from timbrelab.config import FeaturesConfig, load_params, load_stage_config

    return load_stage_config("features", FeaturesConfig, load_params(repo / "params.yaml"))


def prepared_entries(repo: Path) -> list[tuple[str, str, Path, dict]]:
    """(domain, split, split dir, entry) of every prepared clip, in a fixed order."""
    rows = []
    for index in sorted((repo / "data/prepared").glob("*/*/index.json")):
        split_dir = index.parent
        for entry in json.loads(index.read_text()):
            rows.append((split_dir.parent.name, split_dir.name, split_dir, entry))
    return rows


def read_audio(path: Path) -> np.ndarray:
    """The stage's own reading: PCM_16 -> float32 in [-1, 1)."""
    pcm = sf.read(str(path), dtype="int16")[0]
    return pcm.astype(np.float32) / 32768.0


def even_pool(rows: list, sr: int, seconds: float) -> list[np.ndarray]:
    """Clips spread evenly over ``rows`` (every domain and split in proportion) until ``seconds``."""
    durations = [sf.info(str(split_dir / e["file"])).frames / sr for _, _, split_dir, e in rows]
    mean = float(np.mean(durations))
    count = min(len(rows), int(np.ceil(seconds / mean)))
    while True:
        picks = np.unique(np.linspace(0, len(rows) - 1, count).round().astype(int))
        if sum(durations[i] for i in picks) >= seconds or count >= len(rows):
            break
        count += 1
    return [read_audio(rows[i][2] / rows[i][3]["file"]) for i in picks]


# ---------------------------------------------------------------------------------- 1. warm speed


def load_note() -> None:
    """Other jobs may share the cores: the 1-minute load average (this benchmark's own work adds ~1)."""
    print(f"\n(1-minute load average after this section: {os.getloadavg()[0]:.2f})")


def warm_rate(fn, clips: list[np.ndarray], sr: int, warmup: np.ndarray) -> tuple[float, float, list]:
    fn(warmup)
    outputs = []
    started = time.perf_counter()
    for clip in clips:
        outputs.append(fn(clip))
    wall = time.perf_counter() - started
    return sum(c.shape[0] for c in clips) / sr, wall, outputs


def cents(est: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return 1200.0 * np.log2(np.asarray(est, np.float64) / np.asarray(ref, np.float64))


def accuracy(tracks: list[tuple[np.ndarray, np.ndarray]], truths: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
             cfg) -> dict[str, float]:
    """RPA, median |cents|, voicing recall / false alarm (confidence >= the config's threshold)."""
    errors, conf_voiced, conf_unvoiced = [], [], []
    for (f0, conf), (times, true_f0, voiced) in zip(tracks, truths):
        frame = np.round(times * cfg.sample_rate / cfg.frame_hop).astype(int)
        ok = (frame >= 0) & (frame < f0.shape[0])
        frame, true_f0, voiced = frame[ok], true_f0[ok], voiced[ok]
        errors.append(np.abs(cents(f0[frame[voiced]], true_f0[voiced])))
        conf_voiced.append(conf[frame[voiced]])
        conf_unvoiced.append(conf[frame[~voiced]])
    err, cv, cu = (np.concatenate(x) for x in (errors, conf_voiced, conf_unvoiced))
    thr = cfg.pitch.voiced_threshold
    return {"rpa": float(np.mean(err <= CENTS_OK)), "median": float(np.median(err)),
            "recall": float(np.mean(cv >= thr)), "fa": float(np.mean(cu >= thr)) if cu.size else float("nan"),
            "voiced_frames": int(err.size)}


def warm_section(repo: Path, cfg) -> None:
    from timbrelab.data.features import clip_features
    from timbrelab.dsp import pitch
    from timbrelab.dsp.cqt import log_cqt
    from timbrelab.dsp.loudness import a_weighted_loudness
    from timbrelab.dsp.pitch import estimate_f0
    from timbrelab.f0track import read_f0_csv

    sr, hop = cfg.sample_rate, cfg.frame_hop
    rows = prepared_entries(repo)
    pool = even_pool(rows, sr, POOL_SECONDS)
    pool_seconds = sum(c.shape[0] for c in pool) / sr
    source = [r for r in rows if r[0] == "source"]
    glide_clips, truths = [], []
    for _, _, split_dir, entry in source:
        if sum(c.shape[0] for c in glide_clips) / sr >= PYIN_SECONDS - 1e-9:
            break
        glide_clips.append(read_audio(split_dir / entry["file"]))
        times, f0, voiced = read_f0_csv(split_dir / entry["f0_file"])
        truths.append((times, f0, voiced))
    glide_seconds = sum(c.shape[0] for c in glide_clips) / sr
    warmup = pool[0][:sr]  # 1 s: enough to compile and load everything

    def f0_fn(name):
        return lambda x: estimate_f0(x, sr, hop, estimator=name, fmin_hz=cfg.pitch.fmin_hz, fmax_hz=cfg.pitch.fmax_hz)

    cqt_fn = lambda x: log_cqt(x, sr, hop_length=cfg.cqt.hop_length, fmin_hz=cfg.cqt.fmin_hz,
                               bins_per_octave=cfg.cqt.bins_per_octave, n_bins=cfg.cqt.n_bins,
                               log_floor=cfg.cqt.log_floor)
    loud_fn = lambda x: a_weighted_loudness(x, sr, hop, n_fft=cfg.loudness.n_fft,
                                            floor_db=cfg.loudness.floor_db)

    rows_out = []
    audio, wall, _ = warm_rate(cqt_fn, pool, sr, warmup)
    rows_out.append((f"`log_cqt` ({cfg.cqt.n_bins} bins, {cfg.cqt.bins_per_octave}/octave, hop {cfg.cqt.hop_length})",
                     audio, wall, ""))

    os.environ["TIMBRELAB_ONNX_THREADS"] = "1"  # as in a stage worker
    pitch._swift_detector.cache_clear()
    audio, wall, _ = warm_rate(f0_fn("swift"), pool, sr, warmup)
    swift_glides = [f0_fn("swift")(c) for c in glide_clips]
    acc = accuracy(swift_glides, truths, cfg)
    rows_out.append((f"`estimate_f0` swift (hop {hop}), 1 ONNX thread", audio, wall, acc))
    os.environ.pop("TIMBRELAB_ONNX_THREADS")
    pitch._swift_detector.cache_clear()
    audio, wall, _ = warm_rate(f0_fn("swift"), pool, sr, warmup)
    rows_out.append(("`estimate_f0` swift, onnxruntime's default threads", audio, wall, None))
    os.environ["TIMBRELAB_ONNX_THREADS"] = "1"
    pitch._swift_detector.cache_clear()

    audio, wall, pyin_glides = warm_rate(f0_fn("pyin"), glide_clips, sr, warmup)
    acc = accuracy(pyin_glides, truths, cfg)
    label = f"`estimate_f0` pyin (hop {hop}), **{glide_seconds:.0f} s only** ({len(glide_clips)} source glide clips)"
    rows_out.append((label, audio, wall, acc))

    audio, wall, _ = warm_rate(loud_fn, pool, sr, warmup)
    rows_out.append((f"`a_weighted_loudness` (hop {hop}, n_fft {cfg.loudness.n_fft})", audio, wall, ""))
    audio, wall, _ = warm_rate(lambda x: clip_features(x, cfg), pool, sr, warmup)
    rows_out.append((f"`clip_features` (all of the above, estimator {cfg.pitch.estimator}: one stage worker's work)",
                     audio, wall, ""))

    counts = {}
    for domain, *_ in rows:
        counts[domain] = counts.get(domain, 0) + 1
    print(f"\n## 1. Warm, in-process, one process (after one warm-up call)\n\n"
          f"Clips: {len(pool)} x 4 s = {pool_seconds:.0f} s, evenly spaced over all {len(rows)} prepared clips "
          f"({', '.join(f'{d} {n}' for d, n in sorted(counts.items()))}; every split); pyin on the first "
          f"{glide_seconds:.0f} s of source glides. Accuracy on the source glides' known f0 "
          f"({glide_seconds:.0f} s, {len(glide_clips)} clips, the same clips for both estimators; pure-sine glides), "
          f"voicing at confidence >= {cfg.pitch.voiced_threshold:g} (`features.pitch.voiced_threshold`).\n")
    print("| feature | audio (s) | wall (s) | audio s / s | RPA (50 c) | median abs cents | voicing recall | "
          "voicing false alarm |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, audio, wall, acc in rows_out:
        if isinstance(acc, dict):
            extra = f"{acc['rpa']:.3f} | {acc['median']:.1f} | {acc['recall']:.3f} | {acc['fa']:.3f}"
        else:
            extra = " | | |"
        print(f"| {label} | {audio:.0f} | {wall:.2f} | {audio / wall:.1f} | {extra} |")
    load_note()


# ---------------------------------------------------------------------------------- 2. cold costs

COLD_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np, soundfile as sf
from timbrelab.config import FeaturesConfig, load_params, load_stage_config
what, path = sys.argv[1], sys.argv[2]
cfg = load_stage_config("features", FeaturesConfig, load_params("params.yaml"))
x = sf.read(path, dtype="int16")[0].astype(np.float32) / 32768.0
t1 = time.perf_counter()
import librosa
if what == "log_cqt":
    from timbrelab.dsp.cqt import log_cqt
    call = lambda: log_cqt(x, cfg.sample_rate, hop_length=cfg.cqt.hop_length, fmin_hz=cfg.cqt.fmin_hz,
                           bins_per_octave=cfg.cqt.bins_per_octave, n_bins=cfg.cqt.n_bins,
                           log_floor=cfg.cqt.log_floor)
else:
    from timbrelab.dsp.pitch import estimate_f0
    call = lambda: estimate_f0(x, cfg.sample_rate, cfg.frame_hop, estimator=what, fmin_hz=cfg.pitch.fmin_hz,
                               fmax_hz=cfg.pitch.fmax_hz)
t2 = time.perf_counter()
call()
t3 = time.perf_counter()
call()
t4 = time.perf_counter()
print(json.dumps({"import": t2 - t0, "first": t3 - t2, "second": t4 - t3}))
"""


def cold_run(repo: Path, what: str, clip: Path, extra_env: dict[str, str] | None = None) -> dict[str, float]:
    env = {**tool_env(repo), **(extra_env or {})}
    if "TIMBRELAB_ONNX_THREADS" not in (extra_env or {}):
        env.pop("TIMBRELAB_ONNX_THREADS", None)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", COLD_SCRIPT, what, str(clip)], cwd=repo, env=env,
                            capture_output=True, text=True, check=True)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    out["process"] = time.perf_counter() - started
    return out


def cold_section(repo: Path, tmp: Path) -> None:
    clip = next((repo / "data/prepared/cello/train").glob("*.wav"))
    empty = tmp / "numba-cache-empty"
    empty.mkdir()
    cases = [
        ("first `log_cqt`, empty numba cache (`NUMBA_CACHE_DIR` = a new directory)", "log_cqt",
         {"NUMBA_CACHE_DIR": str(empty)}),
        ("first `log_cqt`, normal numba cache (already filled)", "log_cqt", {}),
        ("first swift `estimate_f0` (ONNX model load), 1 ONNX thread as in a worker", "swift",
         {"TIMBRELAB_ONNX_THREADS": "1"}),
        ("first pyin `estimate_f0`", "pyin", {}),
    ]
    print("\n## 2. Cold one-off costs, each in a fresh interpreter (one 4 s cello clip, called twice)\n\n"
          "Imports = numpy, soundfile, the config, `import librosa` and the timbrelab module (librosa loads its "
          "submodules, and numba compiles or loads their functions, lazily: inside the first call); cold cost = "
          "first call - second call; process = the whole interpreter, start to exit.\n")
    print("| case | imports (s) | first call (s) | second call (s) | cold cost (s) | process wall (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, what, env in cases:
        r = cold_run(repo, what, clip, env)
        print(f"| {label} | {r['import']:.2f} | {r['first']:.2f} | {r['second']:.3f} | "
              f"{r['first'] - r['second']:.2f} | {r['process']:.1f} |")
    load_note()


# ------------------------------------------------------------------------------------ 3. the stage


def stage_section(repo: Path, cfg) -> None:
    wall = timed([str(BIN / "dvc"), "repro", "features"], repo)
    inside = stage_seconds(repo)["features"]
    manifest = json.loads((repo / "data/features/manifest.json").read_text())
    audio = sum(split["seconds"] for splits in manifest["domains"].values() for split in splits.values())
    clips = sum(split["clips"] for splits in manifest["domains"].values() for split in splits.values())
    print(f"\n## 3. The whole stage: `dvc repro features` ({cfg.workers} workers, estimator "
          f"{cfg.pitch.estimator}; demo profile, {clips} clips, {len(manifest['failed'])} skipped)\n")
    print("| measured | audio (s) | wall (s) | audio s / s |\n| --- | --- | --- | --- |")
    print(f"| `dvc repro features`, from outside | {audio:.0f} | {wall:.1f} | {audio / wall:.0f} |")
    print(f"| inside its MLflow run (`stage_seconds`) | {audio:.0f} | {inside:.1f} | {audio / inside:.0f} |")
    load_note()


# -------------------------------------------------------------------------------------- 4. memory

MEMORY_SCRIPT = r"""
import json, resource, sys, threading, time
from pathlib import Path
import psutil
from timbrelab.config import FeaturesConfig, load_params, load_stage_config
from timbrelab.data.features import extract_split, split_statistics

prepared, out = Path(sys.argv[1]), Path(sys.argv[2])
cfg = load_stage_config("features", FeaturesConfig, load_params("params.yaml"))
cfg.workers = 2
peak = {"anon_self": 0, "file_self": 0, "anon_all": 0, "rss_all": 0}
done = threading.Event()

def status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(("RssAnon:", "RssFile:", "VmRSS:")):
                key, value = line.split(":")
                fields[key] = int(value.split()[0])
    return fields

def sample():
    me = psutil.Process()
    while not done.is_set():
        try:
            own = status(me.pid)
            anon, rss = own["RssAnon"], own["VmRSS"]
            for child in me.children(recursive=True):
                try:
                    theirs = status(child.pid)
                    anon, rss = anon + theirs["RssAnon"], rss + theirs["VmRSS"]
                except (OSError, KeyError):
                    pass
            peak["anon_self"] = max(peak["anon_self"], own["RssAnon"])
            peak["file_self"] = max(peak["file_self"], own["RssFile"])
            peak["anon_all"] = max(peak["anon_all"], anon)
            peak["rss_all"] = max(peak["rss_all"], rss)
        except (OSError, KeyError, psutil.Error):
            pass
        time.sleep(0.02)

thread = threading.Thread(target=sample, daemon=True)
thread.start()
started = time.perf_counter()
summary = extract_split(prepared, out, cfg, label="bench", progress=False)
stats = split_statistics(out, cfg)
wall = time.perf_counter() - started
done.set()
thread.join()
print(json.dumps({"clips": summary["clips"], "listed": len(json.loads((prepared / "index.json").read_text())),
                  "seconds": summary["seconds"], "stats_clips": stats["clips"], "wall": wall,
                  "self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "children_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, **peak}))
"""


# Linux keeps the RSS high-water mark of the address space a process had before exec in its ru_maxrss:
# started straight from this (large) process, the measured one would report this one's size. A small
# interpreter in between starts it from a small address space.
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def memory_section(repo: Path, tmp: Path) -> None:
    train = repo / "data/prepared/nsynth/train"
    entries = json.loads((train / "index.json").read_text())
    results = {}
    for times in (1, 4):
        prepared = tmp / f"nsynth-train-x{times}"
        prepared.mkdir()
        listed = [{**e, "id": f"{e['id']}__copy{k}" if k else e["id"], "file": str(train / e["file"])}
                  for k in range(times) for e in entries]
        (prepared / "index.json").write_text(json.dumps(listed))
        out = subprocess.run([sys.executable, "-c", LAUNCHER, sys.executable, "-c", MEMORY_SCRIPT, str(prepared),
                              str(tmp / f"features-x{times}")],
                             cwd=repo, env=tool_env(repo), capture_output=True, text=True, check=True)
        results[times] = json.loads(out.stdout.strip().splitlines()[-1])
    mib = lambda kib: kib / 1024
    print("\n## 4. Memory against the number of files: `extract_split` + `split_statistics`, 2 workers\n\n"
          "`data/prepared/nsynth/train` listed once and four times (distinct ids, the same wav files), in a fresh "
          "interpreter each (started from a small launcher, so that ru_maxrss is its own). RSS counts the pages "
          "of the memory-mapped outputs the process has touched (RssFile: page cache, reclaimable) and, in a "
          "worker, the pages it shares with the process it was forked from (so the sum of the two counts those "
          "twice); RssAnon is the memory a process allocates itself. Sampled columns: every 20 ms from /proc, "
          "process and workers at the same instant.\n")
    print("| listing | clips listed / written | audio (s) | wall (s) | ru_maxrss process (MiB) | ru_maxrss largest "
          "worker (MiB) | sum of the two (MiB) | sampled peak VmRSS, process + workers (MiB) | sampled peak RssAnon, "
          "process (MiB) | sampled peak RssAnon, process + workers (MiB) | sampled peak RssFile, process (MiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for times, r in results.items():
        print(f"| {times}x | {r['listed']} / {r['clips']} | {r['seconds']:.0f} | {r['wall']:.1f} | "
              f"{mib(r['self_kib']):.0f} | {mib(r['children_kib']):.0f} | "
              f"{mib(r['self_kib'] + r['children_kib']):.0f} | {mib(r['rss_all']):.0f} | {mib(r['anon_self']):.0f} | "
              f"{mib(r['anon_all']):.0f} | {mib(r['file_self']):.0f} |")
    load_note()


# ----------------------------------------------------------------------------------------- main


def main() -> None:
    import librosa
    import numba
    import onnxruntime
    import swift_f0

    begun = time.perf_counter()
    print(f"# features stage benchmark — {time.strftime('%Y-%m-%d %H:%M')} — {platform.platform()}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, librosa "
          f"{librosa.__version__}, numba {numba.__version__}, onnxruntime {onnxruntime.__version__}, swift-f0 "
          f"{swift_f0.__version__}; load average at start {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        repo = copy_repository(tmp / "timbrelab")
        prepare_wall = timed([str(BIN / "dvc"), "repro", "prepare"], repo)
        cfg = load_cfg(repo)
        rows = prepared_entries(repo)
        total = sum(sf.info(str(d / e["file"])).frames for *_, d, e in rows) / cfg.sample_rate
        print(f"\nFresh copy of the repository; `dvc repro prepare` (demo profile, acquire stages included) "
              f"took {prepare_wall:.1f} s and prepared {len(rows)} clips, {total:.0f} s of audio "
              f"({total / 60:.1f} min).")
        warm_section(repo, cfg)
        cold_section(repo, tmp)
        stage_section(repo, cfg)
        memory_section(repo, tmp)
    print(f"\n(benchmark total {time.perf_counter() - begun:.0f} s; load average at the end "
          f"{os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
