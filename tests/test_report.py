"""The offline HTML listening report: relative links, escaping, n/a cells, determinism, inlining."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from timbrelab.audio import save_wav
from timbrelab.evaluation.report import inline_report, render_cqt_png, write_report

SR = 16000
CQT = {"hop_length": 256, "fmin_hz": 65.406, "bins_per_octave": 24, "n_bins": 156, "log_floor": 1e-5,
       "griffinlim_iters": 32}  # the features config carries keys log_cqt does not take
NASTY = "<b>&"
# (wav path relative to the report folder's parent, seconds, Hz)
WAVS = {"data/source/clip_a.wav": (0.5, 220.0), "report/eval/ddsp/audio/clip_a.wav": (1.25, 330.0),
        "data/target/cello one.wav": (0.75, 440.0)}


def sine(seconds: float, hz: float) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def stat(value, low=None, high=None, n=12):
    return {"value": value, "low": low, "high": high, "n": n}


def make_data(root: Path) -> dict:
    """WAVs under ``root`` and the report data for ``root / "report"`` (one path outside the report folder
    with a space in it, one inside)."""
    for rel, (seconds, hz) in WAVS.items():
        save_wav(root / rel, sine(seconds, hz), SR)
    metrics = [
        {"key": "raw_pitch", "label": "Raw pitch acc. (50 c)", "group": "pitch", "direction": "higher", "unit": "",
         "description": "share of voiced frames within 50 cents"},
        {"key": "loudness", "label": "Loudness error", "group": "loudness", "direction": "lower", "unit": "dB",
         "description": "mean absolute A-weighted loudness difference"},
        {"key": "frechet", "label": "Fréchet distance", "group": "timbre", "direction": "lower", "unit": "",
         "description": "embedding distance to real target clips"},
    ]
    systems = [
        {"name": "ddsp", "label": "DDSP", "description": "harmonic plus noise synthesiser", "rank": 1,
         "metrics": {"raw_pitch": stat(0.9312, 0.9021, 0.9514), "loudness": stat(2.5, 2.0, 3.0),
                     "frechet": stat(12.3456, 10.0, 14.0)}},
        {"name": "nasty", "label": NASTY, "description": "escaping check", "rank": 2,
         "metrics": {"raw_pitch": stat(0.8, 0.7, 0.9), "loudness": stat(1.25, 1.0, 1.5), "frechet": None}},
        {"name": "ceiling", "label": "real cello", "description": "the target itself", "rank": None,
         "metrics": {"raw_pitch": stat(0.99, 0.98, 1.0), "loudness": stat(float("nan")),
                     "frechet": stat(1.0, 0.5, 1.5)}},
    ]
    return {
        "title": "timbrelab evaluation: source -> cello",
        "source_domain": "source", "target_domain": "cello",
        "ranking": "Systems are ranked by Fréchet distance, then raw pitch accuracy.",
        "metrics": metrics,
        "systems": systems,
        "reference_rows": [{"label": "Fréchet floor (two halves of real cello clips)",
                            "metrics": {"frechet": stat(0.4567, 0.3, 0.6)}}],
        "classifier": {"domains": ["cello", "source", "nsynth"], "accuracy": 0.93, "balanced_accuracy": 0.94,
                       "per_domain": {"cello": 0.89, "source": 0.97, "nsynth": 0.96},
                       "confusion": [[17, 1, 1], [0, 29, 1], [1, 0, 24]], "note": "held-out clips"},
        "clips": [{"id": "clip_a", "items": [
            {"label": "source", "audio": "../data/source/clip_a.wav"},
            {"label": NASTY, "audio": "eval/ddsp/audio/clip_a.wav"},
            {"label": "real cello", "audio": "../data/target/cello one.wav"}]}],
        "notes": ["Listen with headphones & compare."],
    }


def srcs(text: str) -> list[str]:
    return [html.unescape(s) for s in re.findall(r'<(?:audio|source|img)\b[^>]*\ssrc="([^"]*)"', text)]


@pytest.fixture
def report(tmp_path: Path) -> tuple[Path, dict]:
    data = make_data(tmp_path)
    return write_report(tmp_path / "report", data, sample_rate=SR, cqt=CQT), data


def test_links_are_relative_and_resolve(report):
    html_path, _ = report
    assert html_path.name == "index.html"
    text = html_path.read_text(encoding="utf-8")
    refs = srcs(text)
    assert len(refs) == 6  # three audio + three images
    assert sum(r.endswith(".png") for r in refs) == 3
    for ref in refs:
        assert not ref.startswith(("/", "file:", "http")), ref
        assert (html_path.parent / unquote(ref)).is_file(), ref
    assert "cello%20one.wav" in text  # URL-quoted, not a raw space
    assert not re.search(r"https?:|file:|//", re.sub(r"<style>.*?</style>", "", text, flags=re.DOTALL))
    assert str(html_path.parent) not in text
    pngs = sorted(p.name for p in (html_path.parent / "listening").iterdir())
    assert pngs == ["clip_a___b.png", "clip_a__real_cello.png", "clip_a__source.png"]


def test_table_values_escaping_and_sections(report):
    html_path, data = report
    text = html_path.read_text(encoding="utf-8")
    for system in data["systems"]:
        assert html.escape(system["label"]) in text
    assert '<strong>0.931</strong><span class="ci">[0.902, 0.951]</span>' in text  # best raw pitch among ranked systems
    assert '<strong>1.250</strong><span class="ci">[1.000, 1.500]</span>' in text  # lower loudness error wins
    assert '0.990<span class="ci">[0.980, 1.000]</span>' in text and "<strong>0.990" not in text  # the ceiling (rank None) never wins
    assert '<strong>12.346</strong><span class="ci">[10.000, 14.000]</span>' in text
    assert text.count(">n/a<") == 2  # frechet None and loudness NaN
    assert '0.457<span class="ci">[0.300, 0.600]</span>' in text  # reference row
    assert "&lt;b&gt;&amp;" in text and NASTY not in text
    assert "Raw pitch acc. (50 c) \u2191" in text and "Loudness error (dB) \u2193" in text
    assert "Listen with headphones &amp; compare." in text
    assert "<th>nsynth</th>" in text and '<td class="num">29</td>' in text
    assert text.count('<audio controls preload="metadata" src=') == 3
    assert re.search(r'<img src="listening/clip_a__source.png" alt="[^"]+" width="320" height="128">', text)


def test_deterministic_and_listening_written_fresh(tmp_path: Path):
    data = make_data(tmp_path)
    first = write_report(tmp_path / "report", data, sample_rate=SR, cqt=CQT)
    (tmp_path / "report" / "listening" / "stale.png").write_bytes(b"old")
    copy = tmp_path / "copy"  # a second report folder seeing the same WAVs through links
    (copy / "report").mkdir(parents=True)
    (copy / "data").symlink_to(tmp_path / "data")
    (copy / "report" / "eval").symlink_to(tmp_path / "report" / "eval")
    second = write_report(copy / "report", data, sample_rate=SR, cqt=CQT)
    again = write_report(tmp_path / "report", data, sample_rate=SR, cqt=CQT)
    assert not (tmp_path / "report" / "listening" / "stale.png").exists()
    assert first.read_bytes() == second.read_bytes() == again.read_bytes()
    names = sorted(p.name for p in (first.parent / "listening").iterdir())
    assert names == sorted(p.name for p in (second.parent / "listening").iterdir())
    for name in names:
        assert (first.parent / "listening" / name).read_bytes() == (second.parent / "listening" / name).read_bytes()


def test_render_cqt_png_is_deterministic_and_small(tmp_path: Path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    render_cqt_png(sine(0.5, 220.0), SR, a, title="x", cqt=CQT)
    render_cqt_png(sine(0.5, 220.0), SR, b, title="x", cqt=CQT)
    data = a.read_bytes()
    assert data.startswith(b"\x89PNG") and data == b.read_bytes()
    assert int.from_bytes(data[16:20], "big") == 320 and int.from_bytes(data[20:24], "big") == 128
    assert b"Software" not in data and b"matplotlib" not in data
    render_cqt_png(sine(0.5, 220.0), SR, b, title="x", cqt={**CQT, "vmax": 1.0})
    assert b.read_bytes() != data  # the colour range is honoured


def test_inline_report_is_self_contained(report, tmp_path: Path):
    html_path, _ = report
    text = inline_report(html_path)
    refs = srcs(text)
    assert len(refs) == 6 and all(r.startswith("data:") for r in refs)
    assert sum(r.startswith("data:audio/wav;base64,") for r in refs) == 3
    assert sum(r.startswith("data:image/png;base64,") for r in refs) == 3
    wav = (tmp_path / "data" / "source" / "clip_a.wav").read_bytes()
    assert f"data:audio/wav;base64,{base64.b64encode(wav).decode()}" in text
    assert "&lt;b&gt;&amp;" in text  # everything else unchanged


def test_missing_files_name_themselves(report, tmp_path: Path):
    html_path, data = report
    missing = tmp_path / "data" / "target" / "cello one.wav"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match="cello one.wav"):
        inline_report(html_path)
    with pytest.raises(FileNotFoundError, match="cello one.wav"):
        write_report(tmp_path / "report", data, sample_rate=SR, cqt=CQT)
    assert (tmp_path / "report" / "listening" / "clip_a__source.png").is_file()  # the old report is kept
