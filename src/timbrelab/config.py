"""Structured configs for every stage, loading params.yaml, and composing conf/.

conf/ (plain Hydra YAML) is the single source of truth; params.yaml is conf/ composed and resolved,
keyed by stage. A stage validates its section by merging it into one of the dataclass schemas below,
so a misspelt key or a wrong type fails at start with a message that names the key.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from timbrelab.errors import ConfigError

T = TypeVar("T")

PARAMS_FILE = "params.yaml"
CONF_DIR = "conf"
CONF_NAME = "config"


# --------------------------------------------------------------------------------------------------
# Schemas. Field defaults document the demo profile; conf/ sets the values that are actually used.


@dataclass
class SplitFractions:
    """Fractions of recordings (never segments) per split; must sum to 1."""

    train: float = 0.8
    valid: float = 0.1
    test: float = 0.1


@dataclass
class OfflineCelloConfig:
    """Bach-style monophonic cello material rendered from the General MIDI soundfont."""

    source: str = "offline"
    seed: int = 0
    sample_rate: int = 16000
    n_recordings: int = 8
    seconds_per_recording: float = 40.0
    program: int = 42  # General MIDI cello


@dataclass
class VideoEntry:
    """One resolved video: the committed, drift-free description of what to download."""

    id: str = "???"
    url: str = "???"
    title: str = ""
    duration_s: float | None = None
    uploader: str = ""


@dataclass
class YoutubeConfig:
    """Bach cello suites from YouTube (or any yt-dlp URL): exactly the committed ``videos``."""

    source: str = "youtube"
    sample_rate: int = 16000
    queries: list[str] = field(default_factory=list)  # what `timbrelab youtube-resolve` searched
    videos: list[VideoEntry] = field(default_factory=list)
    min_duration_s: float = 0.0
    max_duration_s: float = 4 * 3600.0
    max_items: int | None = None
    retries: int = 3
    socket_timeout_s: float = 30.0
    cookies_file: str | None = None  # Netscape cookies.txt, when YouTube asks to confirm you are not a bot
    js_runtimes: list[str] = field(default_factory=lambda: ["deno"])  # for YouTube's challenges: deno, node, bun
    cache_dir: str = "data/cache/youtube"  # downloads + yt-dlp archive, kept across runs (not a DVC out)


@dataclass
class LocalFolderConfig:
    """Your own recordings: every audio file under ``path`` (recursively)."""

    source: str = "local"
    path: str = "???"
    license: str = "unknown (your own recordings)"


@dataclass
class OfflineNSynthConfig:
    """An NSynth-format subset rendered from the soundfont: same schema, layout and note timing."""

    source: str = "offline"
    seed: int = 0
    # family -> General MIDI programs; each program is one NSynth "instrument". Empty by default:
    # a dict default would be merged key by key with the configured one instead of replaced.
    families: dict[str, list[int]] = field(default_factory=dict)
    pitch_step: int = 3          # every n-th MIDI pitch inside each program's playable range
    velocities: list[int] = field(default_factory=lambda: [50, 100])
    split: SplitFractions = field(default_factory=SplitFractions)  # fractions of instruments


@dataclass
class NSynthFilter:
    """Which NSynth notes to keep while extracting (empty list = keep all)."""

    families: list[str] = field(default_factory=lambda: ["string", "vocal", "flute", "brass", "reed"])
    sources: list[str] = field(default_factory=lambda: ["acoustic"])
    pitch_min: int = 0
    pitch_max: int = 127
    velocities: list[int] = field(default_factory=list)
    exclude_qualities: list[str] = field(default_factory=list)


@dataclass
class NSynthDownloadConfig:
    """The official NSynth json/wav archives, downloaded with resume and extracted safely."""

    source: str = "download"
    url_template: str = "http://download.magenta.tensorflow.org/datasets/nsynth/nsynth-{split}.jsonwav.tar.gz"
    splits: list[str] = field(default_factory=lambda: ["train", "valid", "test"])
    filter: NSynthFilter = field(default_factory=NSynthFilter)
    sha256: dict[str, str] = field(default_factory=dict)  # split -> expected archive sha256 (optional)
    retries: int = 5
    timeout_s: float = 60.0
    cache_dir: str = "data/cache/nsynth"  # archives (and .part files), kept across runs


@dataclass
class NSynthLocalConfig:
    """Archives you already have: ``path`` holds nsynth-<split>.jsonwav.tar.gz files."""

    source: str = "local"
    path: str = "???"
    splits: list[str] = field(default_factory=lambda: ["train", "valid", "test"])
    filter: NSynthFilter = field(default_factory=NSynthFilter)


@dataclass
class GlidesSourceConfig:
    """Sine tones with glides, legato and staccato, with their true f0 tracks."""

    source: str = "glides"
    seed: int = 0
    sample_rate: int = 16000
    n_phrases: int = 12
    seconds_per_phrase: float = 10.0
    hop_length: int = 64  # f0 truth every 64 samples = 250 Hz at 16 kHz, the model frame rate
    pitch_min: int = 43   # G2
    pitch_max: int = 72   # C5
    harmonics: int = 1    # 1 = pure sine


@dataclass
class PrepareConfig:
    """Policy for turning raw domains into model-ready clips."""

    seed: int = 0
    sample_rate: int = 16000
    segment_seconds: float = 4.0
    segment_hop_seconds: float = 4.0      # < segment_seconds gives overlapping segments
    trim_top_db: float = 60.0             # trim leading/trailing audio this far below the peak
    target_rms_db: float = -20.0          # loudness normalisation target (RMS of active frames)
    peak_limit: float = 0.99
    silence_threshold_db: float = -55.0   # a segment / note quieter than this (RMS dBFS) is dropped
    min_recording_seconds: float = 1.0
    split: SplitFractions = field(default_factory=SplitFractions)


@dataclass
class CQTConfig:
    """log-CQT for CycleGAN/WaveNet: C2 upwards, under Nyquist (checked at start)."""

    hop_length: int = 256         # 4 model frames: cqt_hop / frame_hop must be an integer
    fmin_hz: float = 65.406       # C2, the cello's open C string
    bins_per_octave: int = 24
    n_bins: int = 156             # 6.5 octaves
    log_floor: float = 1e-5       # log(|C| + floor)
    griffinlim_iters: int = 32    # phase recovery for listening / the no-model baseline


@dataclass
class PitchConfig:
    """f0 with confidence at the model frame rate."""

    estimator: str = "swift"      # swift (ONNX, model in its wheel) | pyin (librosa)
    fmin_hz: float = 50.0
    fmax_hz: float = 2000.0
    voiced_threshold: float = 0.5  # confidence at or above which a frame counts as voiced (stats, report)


@dataclass
class LoudnessConfig:
    """A-weighted loudness per frame, DDSP-style."""

    n_fft: int = 2048
    floor_db: float = -80.0


@dataclass
class FeaturesConfig:
    """The inputs every model trains on, computed once per prepared clip."""

    sample_rate: int = 16000
    frame_hop: int = 64           # model frame rate: 250 Hz at 16 kHz
    domains: list[str] = field(default_factory=lambda: ["cello", "source", "nsynth"])
    silence_db: float = -70.0     # a clip whose loudness never rises above this is skipped as silent
    workers: int = 2              # processes computing features (results are identical for any count)
    cqt: CQTConfig = field(default_factory=CQTConfig)
    pitch: PitchConfig = field(default_factory=PitchConfig)
    loudness: LoudnessConfig = field(default_factory=LoudnessConfig)


ACQUIRE_CELLO = {"offline": OfflineCelloConfig, "youtube": YoutubeConfig, "local": LocalFolderConfig}
ACQUIRE_NSYNTH = {"offline": OfflineNSynthConfig, "download": NSynthDownloadConfig, "local": NSynthLocalConfig}
ACQUIRE_SOURCE = {"glides": GlidesSourceConfig, "local": LocalFolderConfig}


# --------------------------------------------------------------------------------------------------
# Loading and validating


def _suggest(key: str, candidates: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, candidates, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def validate(section: Any, schema: type[T], where: str) -> T:
    """Merge ``section`` into the dataclass ``schema``; ConfigError naming the key on any mismatch."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    base = OmegaConf.structured(schema)
    try:
        merged = OmegaConf.merge(base, section)
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
        hint = ""
        leaf = str(key).split(".")[-1]
        if "not in" in str(getattr(exc, "msg", exc)):
            parent = OmegaConf.select(base, ".".join(str(key).split(".")[:-1])) if "." in str(key) else base
            if parent is not None and OmegaConf.is_dict(parent):
                hint = _suggest(leaf, [str(k) for k in parent.keys()])
        message = str(getattr(exc, "msg", exc)).splitlines()[0]
        raise ConfigError(f"{where}.{key}: {message}{hint}") from None
    except ConfigError as exc:
        # A schema's own check names its key relative to its section (``trainer.devices``): add the section.
        if str(exc).startswith(where):
            raise
        raise ConfigError(f"{where}.{exc}") from None
    return obj  # type: ignore[return-value]


def from_known_keys(schema: type[T], params: Any, where: str) -> T:
    """``schema(**params)`` for a flat dataclass, with a ConfigError listing unknown keys (no OmegaConf: the
    dataclass's own ``__post_init__`` checks the values)."""
    known = {f.name for f in dataclasses.fields(schema)}
    unknown = sorted(set(params) - known)
    if unknown:
        hints = "".join(_suggest(key, sorted(known)) for key in unknown[:1])
        raise ConfigError(f"{where}: unknown keys {unknown} (known: {sorted(known)}){hints}")
    return schema(**params)


def params_path() -> Path:
    """params.yaml of the repository the stage runs in (``TIMBRELAB_PARAMS`` overrides)."""
    from timbrelab.paths import repo_root

    override = os.environ.get("TIMBRELAB_PARAMS")
    return Path(override) if override else repo_root() / PARAMS_FILE


def load_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
    import yaml

    path = Path(path) if path else params_path()
    if not path.exists():
        raise ConfigError(f"{path}: not found; run `make params` (or `timbrelab params`) to compose it from conf/")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of stage sections, got {type(data).__name__}")
    return data


def stage_section(stage: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    params = load_params() if params is None else params
    if stage not in params:
        raise ConfigError(
            f"params.yaml has no '{stage}' section{_suggest(stage, list(params))}; regenerate it with `make params`"
        )
    section = params[stage]
    if not isinstance(section, dict):
        raise ConfigError(f"params.yaml: '{stage}' must be a mapping, got {type(section).__name__}")
    return section


def load_stage_config(stage: str, schemas: type[T] | dict[str, type], params: dict[str, Any] | None = None) -> T:
    """Validated config of ``stage``. ``schemas`` may map the section's ``source`` value to a schema
    (a stage whose variants are chosen by a config group)."""
    section = stage_section(stage, params)
    if isinstance(schemas, dict):
        source = section.get("source")
        if source not in schemas:
            raise ConfigError(
                f"params.yaml: {stage}.source is {source!r}; expected one of {sorted(schemas)}"
                f" (choose with e.g. `-S '{_group_of(stage)}@{stage}={sorted(schemas)[0]}'`)"
            )
        return validate(section, schemas[source], stage)
    return validate(section, schemas, stage)


def _group_of(stage: str) -> str:
    return {"acquire_cello": "cello", "acquire_nsynth": "nsynth", "acquire_source": "source"}.get(stage, stage)


# --------------------------------------------------------------------------------------------------
# Composing conf/ (the same way DVC's Hydra integration does, so both write identical params.yaml)


def compose(overrides: list[str] | tuple[str, ...] = (), conf_dir: str | os.PathLike | None = None,
            config_name: str = CONF_NAME) -> Any:
    """Compose conf/ with Hydra overrides and resolve interpolations -> an OmegaConf DictConfig."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from timbrelab.paths import repo_root

    conf = Path(conf_dir) if conf_dir else repo_root() / CONF_DIR
    try:
        with initialize_config_dir(str(conf.resolve()), version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"{conf}: cannot compose with overrides {list(overrides)}: {' '.join(str(exc).split())}") from None
    return cfg


def composed_yaml(overrides: list[str] | tuple[str, ...] = (), conf_dir: str | os.PathLike | None = None, *,
                  stage_schemas: dict[str, Any] | None = None) -> str:
    """params.yaml text exactly as `dvc exp run` writes it (OmegaConf.to_yaml of the resolved config).

    With ``stage_schemas`` ({section: the stage's SCHEMAS}, the stage table's), every section is validated
    first (:func:`validate_params`): a bad value raises a ConfigError naming its key, and no text comes back.
    """
    from omegaconf import OmegaConf

    cfg = compose(overrides, conf_dir)
    if stage_schemas is not None:
        validate_params(OmegaConf.to_container(cfg), stage_schemas)
    return OmegaConf.to_yaml(cfg)


def validate_params(params: dict[str, Any], stage_schemas: dict[str, Any]) -> None:
    """Validate each stage's section of composed ``params`` the way the stage itself will at start."""
    for stage, schemas in stage_schemas.items():
        load_stage_config(stage, schemas, params)


def write_params(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = (), *,
                 stage_schemas: dict[str, Any]) -> str:
    """Compose, validate every stage's section against ``stage_schemas``, then write ``path`` atomically
    (a bad value leaves ``path`` untouched). config may not import the stage table: the caller passes it
    (``{e.STAGE: e.SCHEMAS for e in map(stage_entry, stage_names())}``)."""
    from timbrelab.fsutil import atomic_write_text

    text = composed_yaml(overrides, stage_schemas=stage_schemas)
    atomic_write_text(path, text)
    return text


def as_dict(obj: Any) -> dict[str, Any]:
    """A schema instance as plain containers (for MLflow params, manifests, checkpoints)."""
    return dataclasses.asdict(obj)
