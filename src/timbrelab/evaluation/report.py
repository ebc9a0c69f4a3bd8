"""The offline HTML listening report: a metrics table with confidence intervals, the classifier's view,
and per clip every system's audio beside its log-CQT image.

Everything is referenced by paths relative to the report folder, so ``index.html`` opens from the file
system with no server and no network (no CDN, no fonts, no scripts). The same data and the same WAVs
give byte-identical HTML and PNGs: no dates, no absolute paths, PNGs without Software metadata.
:func:`inline_report` makes a self-contained copy (data: URIs) for viewers that do not resolve
relative links, such as MLflow's artifact viewer.
"""

from __future__ import annotations

import base64
import html
import math
import mimetypes
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import librosa
import numpy as np

from timbrelab.audio import load_audio
from timbrelab.dsp.cqt import (
    DEFAULT_BINS_PER_OCTAVE,
    DEFAULT_HOP_LENGTH,
    DEFAULT_LOG_FLOOR,
    cqt_frequencies,
    log_cqt,
)
from timbrelab.fsutil import atomic_dir, atomic_path, atomic_write_text

LISTENING_DIR = "listening"
FIG_SIZE_IN = (4.0, 1.6)
FIG_DPI = 80
# A half-amplitude sine reads about 3.1 at C2 and 1.7 at 1 kHz: 3.0 keeps loud notes from saturating.
DEFAULT_VMAX = 3.0
_CQT_KEYS = ("hop_length", "fmin_hz", "bins_per_octave", "n_bins", "log_floor")
_ARROWS = {"higher": "\u2191", "lower": "\u2193"}
_MIME = {".wav": "audio/wav", ".png": "image/png"}
# <audio>, <source> and <img> tags, and the src attribute inside one (the report writes double quotes).
_MEDIA_TAG = re.compile(r"<(?:audio|source|img)\b[^>]*>", re.IGNORECASE)
_SRC_ATTR = re.compile(r'(\ssrc=")([^"]*)(")', re.IGNORECASE)
_NOT_RELATIVE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|/|#)", re.IGNORECASE)

_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 100em; }
table.summary td:nth-child(2) { min-width: 14em; }
.ci { display: block; color: #666; font-size: 0.8em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody.reference td { background: #f6f6f6; font-style: italic; }
.desc { display: block; color: #666; font-size: 0.85em; }
.clip { border-top: 1px solid #ccc; padding-top: 0.5em; }
.items { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; }
figcaption { font-weight: bold; }
audio { display: block; width: 320px; }
"""


def _cqt_params(cqt: Mapping[str, Any]) -> dict[str, Any]:
    """Only the log_cqt arguments: the features config also carries keys such as griffinlim_iters."""
    return {key: cqt[key] for key in _CQT_KEYS if key in cqt}


def render_cqt_png(audio: np.ndarray, sample_rate: int, path: Path, *, title: str, cqt: Mapping[str, Any]) -> None:
    """Small log-CQT image on a fixed colour range, so images of different systems compare by eye."""
    # No pyplot: no global state; savefig picks the Agg canvas for PNG output by itself.
    from matplotlib.figure import Figure

    params = _cqt_params(cqt)
    spec = log_cqt(audio, sample_rate, **params)
    hop = int(params.get("hop_length", DEFAULT_HOP_LENGTH))
    vmin = float(cqt.get("vmin", math.log(float(params.get("log_floor", DEFAULT_LOG_FLOOR)))))
    vmax = float(cqt.get("vmax", DEFAULT_VMAX))
    seconds = spec.shape[1] * hop / sample_rate
    fig = Figure(figsize=FIG_SIZE_IN, dpi=FIG_DPI)
    ax = fig.add_subplot()
    ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax,
              extent=(0.0, seconds, -0.5, spec.shape[0] - 0.5), interpolation="nearest")
    ax.set_yticks(*_octave_ticks(params))
    ax.set_title(title, fontsize=7)
    ax.set_xlabel("s", fontsize=6, labelpad=1)
    ax.tick_params(labelsize=6, length=2, pad=1)
    fig.tight_layout(pad=0.3)
    with atomic_path(path) as tmp:
        # No Software metadata: the same input must give the same bytes.
        fig.savefig(tmp, format="png", dpi=FIG_DPI, metadata={"Software": None})


def _octave_ticks(params: Mapping[str, Any]) -> tuple[list[int], list[str]]:
    """One tick per octave from the lowest bin, labelled with its note name (C2, C3, ... by default)."""
    bpo = int(params.get("bins_per_octave", DEFAULT_BINS_PER_OCTAVE))
    freqs = cqt_frequencies(**{k: params[k] for k in ("fmin_hz", "bins_per_octave", "n_bins") if k in params})
    bins = list(range(0, len(freqs), bpo))
    return bins, [librosa.hz_to_note(float(freqs[k])) for k in bins]


def _fmt(value: Any) -> str:
    """Three decimals; tiny non-zero values in three significant digits so they do not read as 0.000."""
    if value is None:
        return "n/a"
    value = float(value)
    if not math.isfinite(value):
        return "n/a"
    if value != 0.0 and abs(value) < 0.001:
        return f"{value:.3g}"
    return f"{value:.3f}"


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def _value(stats: Mapping[str, Any] | None, key: str) -> float | None:
    """A metric's finite value, or None (missing, None or NaN all mean n/a)."""
    value = ((stats or {}).get(key) or {}).get("value")
    return float(value) if _finite(value) else None


def _cell(stat: Mapping[str, Any] | None, *, bold: bool = False) -> str:
    """``value [low, high]`` with the sample count as a tooltip; n/a when there is no value."""
    if not stat or not _finite(stat.get("value")):
        return '<td class="num">n/a</td>'
    text = _fmt(stat["value"])
    if bold:
        text = f"<strong>{text}</strong>"
    if _finite(stat.get("low")) and _finite(stat.get("high")):
        text += f'<span class="ci">[{_fmt(stat["low"])}, {_fmt(stat["high"])}]</span>'
    title = f' title="n = {_esc(stat["n"])}"' if stat.get("n") is not None else ""
    return f'<td class="num"{title}>{text}</td>'


def _best_values(metrics: Sequence[Mapping[str, Any]], systems: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Per metric, the best value among ranked systems (the ceiling row, rank None, does not compete)."""
    best: dict[str, float] = {}
    for metric in metrics:
        key = metric["key"]
        values = [v for s in systems if s.get("rank") is not None and (v := _value(s.get("metrics"), key)) is not None]
        if values:
            best[key] = max(values) if metric.get("direction") == "higher" else min(values)
    return best


def _metric_header(metric: Mapping[str, Any]) -> str:
    unit = f" ({_esc(metric['unit'])})" if metric.get("unit") else ""
    arrow = _ARROWS.get(str(metric.get("direction")), "")
    return f'<th title="{_esc(metric.get("description", ""))}">{_esc(metric["label"])}{unit} {arrow}</th>'


def _summary_table(data: Mapping[str, Any]) -> str:
    """One row per system in rank order, one column per metric, then the reference rows."""
    metrics = data.get("metrics") or []
    systems = data.get("systems") or []
    best = _best_values(metrics, systems)
    lines = ["<table class=\"summary\">", "<thead><tr><th>Rank</th><th>System</th>"
             + "".join(_metric_header(m) for m in metrics) + "</tr></thead>", "<tbody>"]
    for system in systems:
        stats = system.get("metrics") or {}
        rank = "\u2013" if system.get("rank") is None else _esc(system["rank"])
        desc = f'<span class="desc">{_esc(system["description"])}</span>' if system.get("description") else ""
        ranked = system.get("rank") is not None
        cells = "".join(_cell(stats.get(m["key"]), bold=ranked and _value(stats, m["key"]) == best.get(m["key"], math.nan))
                        for m in metrics)
        lines.append(f"<tr><td>{rank}</td><td>{_esc(system.get('label', system.get('name', '')))}{desc}</td>"
                     f"{cells}</tr>")
    lines.append("</tbody>")
    references = data.get("reference_rows") or []
    if references:
        lines.append('<tbody class="reference">')
        for row in references:
            stats = row.get("metrics") or {}
            cells = "".join(_cell(stats[m["key"]]) if m["key"] in stats else "<td></td>" for m in metrics)
            lines.append(f"<tr><td></td><td>{_esc(row.get('label', ''))}</td>{cells}</tr>")
        lines.append("</tbody>")
    lines.append("</table>")
    return "\n".join(lines)


def _legend(metrics: Sequence[Mapping[str, Any]]) -> str:
    rows = "\n".join(
        f"<tr><td>{_esc(m['label'])}</td><td>{_esc(m.get('group', ''))}</td>"
        f"<td>{_ARROWS.get(str(m.get('direction')), '')} {_esc(m.get('direction', ''))} is better</td>"
        f"<td>{_esc(m.get('unit', ''))}</td><td>{_esc(m.get('description', ''))}</td></tr>" for m in metrics)
    return ("<h2>Metrics</h2>\n<table class=\"legend\">\n<thead><tr><th>Metric</th><th>Group</th><th>Direction</th>"
            f"<th>Unit</th><th>Meaning</th></tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>")


def _classifier_section(clf: Mapping[str, Any] | None) -> str:
    """Accuracy, per-domain accuracy and the confusion matrix (rows: true domain, columns: predicted)."""
    if not clf:
        return ""
    domains = [str(d) for d in clf.get("domains") or []]
    per_domain = clf.get("per_domain") or {}
    parts = ["<h2>Timbre classifier</h2>",
             f"<p>Accuracy {_fmt(clf.get('accuracy'))}, balanced accuracy {_fmt(clf.get('balanced_accuracy'))}.</p>"]
    if per_domain:
        names = domains + [d for d in per_domain if d not in domains]
        parts.append("<table class=\"per-domain\">\n<thead><tr><th>Domain</th><th>Accuracy</th></tr></thead>\n<tbody>\n"
                     + "\n".join(f'<tr><td>{_esc(d)}</td><td class="num">{_fmt(per_domain.get(d))}</td></tr>'
                                 for d in names if d in per_domain) + "\n</tbody>\n</table>")
    confusion = clf.get("confusion") or []
    if confusion:
        head = "".join(f"<th>{_esc(d)}</th>" for d in domains)
        body = "\n".join(
            f"<tr><th>{_esc(domains[i] if i < len(domains) else i)}</th>"
            + "".join(f'<td class="num">{_esc(int(v))}</td>' for v in row) + "</tr>" for i, row in enumerate(confusion))
        parts.append(f"<table class=\"confusion\">\n<caption>Confusion matrix (rows: true, columns: predicted)"
                     f"</caption>\n<thead><tr><th></th>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>")
    if clf.get("note"):
        parts.append(f"<p>{_esc(clf['note'])}</p>")
    return "\n".join(parts)


def _png_name(clip_id: str, label: str, taken: set[str]) -> str:
    """A file-system-safe, unique name from clip id and item label (labels may hold spaces or markup)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{clip_id}__{label}").strip("._") or "clip"
    name, n = f"{stem}.png", 1
    while name.lower() in taken:  # case-insensitive file systems would merge names differing in case only
        n += 1
        name = f"{stem}-{n}.png"
    taken.add(name.lower())
    return name


def _href(report_dir: Path, target: str | os.PathLike) -> str:
    """A URL-quoted path relative to the report folder (absolute inputs are made relative)."""
    path = Path(target)
    rel = os.path.relpath(path, report_dir) if path.is_absolute() else os.fspath(path)
    return quote(Path(rel).as_posix())


def _render_clips(report_dir: Path, clips: Sequence[Mapping[str, Any]], listening: Path, *, sample_rate: int,
                  cqt: Mapping[str, Any]) -> list[list[tuple[str, str, str]]]:
    """Render every item's CQT into ``listening``; per clip, (label, audio href, image href) per item."""
    taken: set[str] = set()
    out = []
    for clip in clips:
        items = []
        for item in clip.get("items") or []:
            wav = report_dir / item["audio"]
            if not wav.is_file():
                raise FileNotFoundError(f"{wav}: audio of clip {clip['id']!r}, item {item['label']!r} is missing")
            audio, _ = load_audio(wav, sample_rate)
            name = _png_name(str(clip["id"]), str(item["label"]), taken)
            render_cqt_png(audio, sample_rate, listening / name, title=f"{clip['id']}: {item['label']}", cqt=cqt)
            items.append((str(item["label"]), _href(report_dir, item["audio"]), f"{LISTENING_DIR}/{quote(name)}"))
        out.append(items)
    return out


def _clips_section(clips: Sequence[Mapping[str, Any]], rendered: list[list[tuple[str, str, str]]]) -> str:
    width, height = int(FIG_SIZE_IN[0] * FIG_DPI), int(FIG_SIZE_IN[1] * FIG_DPI)
    parts = ["<h2>Listening</h2>"] if clips else []
    for clip, items in zip(clips, rendered):
        figures = "\n".join(
            f"<figure>\n<figcaption>{_esc(label)}</figcaption>\n"
            f'<audio controls preload="metadata" src="{_esc(audio)}"></audio>\n'
            f'<img src="{_esc(image)}" alt="log-CQT of {_esc(clip["id"])}, {_esc(label)}" '
            f'width="{width}" height="{height}">\n</figure>' for label, audio, image in items)
        parts.append(f'<section class="clip">\n<h3>{_esc(clip["id"])}</h3>\n<div class="items">\n{figures}\n'
                     "</div>\n</section>")
    return "\n".join(parts)


def _page(data: Mapping[str, Any], rendered: list[list[tuple[str, str, str]]]) -> str:
    title = _esc(data.get("title", "timbrelab evaluation"))
    body = [f"<h1>{title}</h1>"]
    if data.get("source_domain") or data.get("target_domain"):
        body.append(f"<p>Source domain: {_esc(data.get('source_domain', ''))}; "
                    f"target domain: {_esc(data.get('target_domain', ''))}.</p>")
    if data.get("ranking"):
        body.append(f'<p class="ranking">{_esc(data["ranking"])}</p>')
    body += ["<h2>Summary</h2>", _summary_table(data),
             "<p>Cells: value [95 % confidence interval]; bold: best ranked system per column.</p>",
             _legend(data.get("metrics") or []), _classifier_section(data.get("classifier"))]
    notes = data.get("notes") or []
    if notes:
        body += ["<h2>Notes</h2>"] + [f"<p>{_esc(note)}</p>" for note in notes]
    body.append(_clips_section(data.get("clips") or [], rendered))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(part for part in body if part) + "\n</body>\n</html>\n")


def write_report(report_dir: Path, data: Mapping[str, Any], *, sample_rate: int, cqt: Mapping[str, Any]) -> Path:
    """Write ``index.html`` and a fresh ``listening/`` of CQT PNGs (no stale images survive); the html path.

    Audio paths in ``data`` are relative to ``report_dir`` (as the html will use them).
    """
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    clips = data.get("clips") or []
    with atomic_dir(report_dir / LISTENING_DIR) as listening:
        rendered = _render_clips(report_dir, clips, listening, sample_rate=sample_rate, cqt=cqt)
    html_path = report_dir / "index.html"
    atomic_write_text(html_path, _page(data, rendered))
    return html_path


def _data_uri(path: Path) -> str:
    mime = _MIME.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def inline_report(html_path: Path) -> str:
    """The html with every relative audio/image src replaced by a base64 data: URI (self-contained)."""
    html_path = Path(html_path)
    base = html_path.parent

    def inline_src(match: re.Match[str]) -> str:
        src = html.unescape(match.group(2))
        if _NOT_RELATIVE.match(src):
            return match.group(0)
        target = base / unquote(src)
        if not target.is_file():
            raise FileNotFoundError(f"{target}: referenced by {html_path} as {src!r} is missing")
        return f"{match.group(1)}{_data_uri(target)}{match.group(3)}"

    return _MEDIA_TAG.sub(lambda tag: _SRC_ATTR.sub(inline_src, tag.group(0)), html_path.read_text(encoding="utf-8"))
