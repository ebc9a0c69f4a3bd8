"""The comparison behind test_committed_dvc_lock_is_reproduced_from_scratch (tests/lockcheck.py), on fakes made
from the committed dvc.lock and metrics (HEAD), so it runs in a second."""

from __future__ import annotations

import copy
import json
import subprocess

import lockcheck
import pytest
import yaml
from conftest import REPO

DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())
FINGERPRINT = {"cpu_vendor": "GenuineIntel", "cpu_model_name": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
               "cpu_family": "6", "cpu_model": "143", "torch_version": "2.13.0+cpu", "torch_capability": "AVX2",
               "onednn_max_cpu_isa": "AVX2", "mkl_cbwr": "AVX2", "numpy_simd": "X86_V3", "num_threads": 2}
AMD = {**FINGERPRINT, "cpu_vendor": "AuthenticAMD", "cpu_model_name": "AMD EPYC", "cpu_family": "25",
       "cpu_model": "1", "mkl_cbwr": "OFF"}


def head(path: str):
    text = lockcheck.git_show(REPO, path)
    assert text is not None, f"{path} is not committed"
    return text


@pytest.fixture(scope="module")
def committed():
    lock = yaml.safe_load(head("dvc.lock"))
    metrics = {p: json.loads(head(p)) for s in sorted(lockcheck.model_stages(DVC_YAML))
               for p in lockcheck.metrics_files(DVC_YAML, s)}
    return lock, metrics


def run_compare(committed, lock=None, metrics=None, fresh_fp=AMD, committed_fp=FINGERPRINT):
    old_lock, old_metrics = committed
    return lockcheck.compare(DVC_YAML, old_lock, old_lock if lock is None else lock, committed_fp, fresh_fp,
                             old_metrics, old_metrics if metrics is None else metrics)


def first_dep(entry, prefix):
    return next(d for d in entry["deps"] if d["path"].startswith(prefix))


def test_model_stages_follow_the_outputs_of_training():
    models = lockcheck.model_stages(DVC_YAML)
    stages = set(DVC_YAML["stages"])
    assert {s for s in stages if s.startswith("train_")} <= models
    assert {s for s in stages if s.startswith("evaluate_") or s == "report"} <= models
    assert {"features", "transfer_set"} <= models          # numpy's SIMD CQT, and what reads it
    assert not models & {"acquire_cello", "acquire_nsynth", "acquire_source", "prepare"}


def test_model_stages_are_transitive_and_see_nested_paths():
    spec = {"stages": {
        "make": {"deps": ["src/a.py"], "outs": ["data/x"]},
        "train_m": {"deps": ["data/x"], "outs": ["models/m"]},
        "use": {"deps": ["models/m/weights.pt", "data/x"], "outs": [{"out/use": {"cache": False}}]},
        "summary": {"deps": ["out"], "metrics": [{"summary.json": {"cache": False}}]},
        "after": {"deps": ["summary.json"], "outs": ["after"]},
        "other": {"deps": ["data/x"], "outs": ["other"]},
    }}
    assert lockcheck.model_stages(spec) == {"train_m", "use", "summary", "after"}


def test_identical_run_passes_in_both_modes(committed):
    assert run_compare(committed).ok
    assert run_compare(committed, fresh_fp=FINGERPRINT).ok


def test_a_data_stage_difference_fails_naming_the_stage(committed):
    lock = copy.deepcopy(committed[0])
    first_dep(lock["stages"]["prepare"], "data/raw/cello")["md5"] = "0" * 32 + ".dir"
    result = run_compare(committed, lock)
    assert not result.ok and list(result.problems) == ["prepare"]
    message = result.message()
    assert "stage prepare: a data stage differs" in message and "deps data/raw/cello" in message
    # A data stage is held to bytes whatever the fingerprint.
    assert not run_compare(committed, lock, fresh_fp=FINGERPRINT).ok


def test_a_data_stage_param_difference_is_named(committed):
    lock = copy.deepcopy(committed[0])
    lock["stages"]["prepare"]["params"]["params.yaml"]["prepare"]["segment_seconds"] = 2.0
    result = run_compare(committed, lock)
    assert list(result.problems) == ["prepare"] and "prepare.segment_seconds: 4.0 -> 2.0" in result.message()


def _model_run(committed, delta: float, metric: str = "acceptance"):
    """A fresh run whose trained outputs differ (new hashes) and whose ddsp `metric` moved by ``delta``."""
    lock, metrics = copy.deepcopy(committed[0]), copy.deepcopy(committed[1])
    for stage in lockcheck.model_stages(DVC_YAML):
        for out in lock["stages"][stage]["outs"]:
            out["md5"] = "f" * 32
        for dep in lock["stages"][stage]["deps"]:
            if dep["path"].startswith(("models/", "reports/eval")):
                dep["md5"] = "f" * 32
    metrics["reports/metrics.json"]["ddsp"][metric] += delta
    metrics["reports/metrics/evaluate_ddsp.json"][metric] += delta
    return lock, metrics


def test_model_stage_difference_within_tolerance_passes_on_another_cpu(committed):
    lock, metrics = _model_run(committed, -0.109)          # the measured Intel -> AMD acceptance spread
    result = run_compare(committed, lock, metrics)
    assert result.mode == "tolerances" and result.ok, result.message()


def test_model_stage_difference_beyond_tolerance_fails_naming_the_metric(committed):
    lock, metrics = _model_run(committed, -0.3)
    result = run_compare(committed, lock, metrics)
    assert not result.ok and set(result.problems) == {"evaluate_ddsp", "report"}
    message = result.message()
    assert "fingerprint differs from the committed one (cpu_vendor, cpu_model_name, cpu_family, cpu_model, mkl_cbwr)" \
        in message
    assert "stage report: a model stage whose metrics differ beyond the cross-CPU tolerances" in message
    value = committed[1]["reports/metrics.json"]["ddsp"]["acceptance"]
    assert f"reports/metrics.json ddsp.acceptance: {value!r} -> {value - 0.3!r}" in message
    assert "reports/metrics/evaluate_ddsp.json acceptance:" in message and "> 0.22 (0.22 abs)" in message


def test_model_stage_difference_fails_on_the_same_cpu(committed):
    lock, metrics = _model_run(committed, 0.0)
    result = run_compare(committed, lock, metrics, fresh_fp=dict(FINGERPRINT))
    assert result.mode == "bytes" and not result.ok
    assert set(result.problems) == lockcheck.model_stages(DVC_YAML)
    assert "a model stage differs on the same CPU fingerprint" in result.message()


def test_model_stage_code_change_fails_even_on_another_cpu(committed):
    lock, metrics = _model_run(committed, 0.0)
    first_dep(lock["stages"]["train_classifier"], "src/")["md5"] = "0" * 32
    result = run_compare(committed, lock, metrics)
    assert list(result.problems) == ["train_classifier"]
    assert "code, params or data inputs differ from HEAD's (then its metrics are not judged)" in result.message()


def test_a_missing_fingerprint_means_tolerances(committed):
    lock, metrics = _model_run(committed, 0.05)
    result = run_compare(committed, lock, metrics, committed_fp=None)
    assert result.ok and result.fingerprint_diffs == ["<no committed fingerprint>"]


def test_thread_count_alone_makes_another_fingerprint():
    assert lockcheck.fingerprint_differences(FINGERPRINT, {**FINGERPRINT, "num_threads": 1}) == ["num_threads"]
    # Fields outside MATCH_FIELDS (the pin's record, the ISA flag list) do not count.
    assert lockcheck.fingerprint_differences(FINGERPRINT, {**FINGERPRINT, "pin": {"state": "disabled"}}) == []


def test_every_committed_metric_has_a_tolerance_rule(committed):
    for path, doc in committed[1].items():
        for key, value in lockcheck.flatten(doc).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert lockcheck.tolerance_for(lockcheck.metrics_scope(path) + key) is not None, f"{path}: {key}"


def test_metric_rules_pick_the_right_kind():
    def tol(key):
        return lockcheck.tolerance_for(key)[0]

    assert tol("ddsp.acceptance_high") == lockcheck.Tol(abs=0.22)
    assert tol("ddsp.transfer_score") == lockcheck.Tol(abs=0.16)
    assert tol("test/clips") == tol("steps") == tol("ddsp.rank") == lockcheck.Tol()
    # The CycleGAN's metrics (its own files are scoped by name) get the GAN's band; its counts stay exact.
    scope = lockcheck.metrics_scope("reports/metrics/evaluate_cyclegan_untrained.json")
    assert tol(scope + "acceptance") == tol("cyclegan.frechet") == lockcheck.Tol(abs=0.3, rel=0.6)
    assert tol(scope + "clips") == tol("cyclegan/steps") == tol("cyclegan.rank") == lockcheck.Tol()
    assert lockcheck.metrics_scope("reports/metrics/evaluate_ddsp.json") == ""
    assert tol("test/accuracy.cello") == tol("classifier.balanced_accuracy") == lockcheck.Tol(abs=0.04)
    assert tol("val/loss_best") == tol("baseline/test_loss") == lockcheck.Tol(abs=0.01, rel=0.09)
    assert tol("test/margin") == tol("gap") == lockcheck.Tol(abs=0.09)
    assert lockcheck.tolerance_for("something_new") is None


def test_an_unknown_metric_that_changed_is_reported():
    problems = lockcheck.compare_metrics({"a": {"novel": 1.0}}, {"a": {"novel": 1.5}})
    assert problems and "no tolerance rule" in problems[0]
    assert lockcheck.compare_metrics({"x": 1}, {"y": 1}) == ["x: missing from the fresh run", "y: not in HEAD"]


def test_match_fields_agree_with_timbrelab_cpu():
    from timbrelab import cpu

    assert lockcheck.MATCH_FIELDS == cpu.MATCH_FIELDS


def test_committed_files_come_from_head_not_the_working_tree(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True,
                       env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid", "GIT_COMMITTER_NAME": "t",
                            "GIT_COMMITTER_EMAIL": "t@t.invalid", "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})

    spec = {"stages": {"train_m": {"deps": ["x"], "outs": ["m"], "metrics": [{"m.json": {"cache": False}}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"train_m": {"cmd": "old"}}}))
    (tmp_path / "m.json").write_text('{"loss": 1.0}')
    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "c")
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"train_m": {"cmd": "new"}}}))
    (tmp_path / "m.json").write_text('{"loss": 2.0}')
    files = lockcheck.committed_files(tmp_path, spec)
    assert files["lock"]["stages"]["train_m"]["cmd"] == "old"
    assert files["metrics"] == {"m.json": {"loss": 1.0}} and files["fingerprint"] is None
    assert lockcheck.working_files(tmp_path, spec)["metrics"] == {"m.json": {"loss": 2.0}}
