"""The `timbrelab` command. Every error is one line naming the problem, exit code 2, no traceback
unless --debug."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from timbrelab.errors import ConfigError, run_main


def _cmd_params(args: argparse.Namespace) -> None:
    from timbrelab import config
    from timbrelab.paths import repo_root
    from timbrelab.stages import stage_entry, stage_names

    target = Path(args.out) if args.out else repo_root() / config.PARAMS_FILE
    # Every stage validates its section before anything is written: a bad value is one line naming its key.
    schemas = {entry.STAGE: entry.SCHEMAS for entry in map(stage_entry, stage_names())}
    text = config.composed_yaml(args.overrides, stage_schemas=schemas)
    if args.check:
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != text:
            raise ConfigError(f"{target} differs from conf/ composed with {args.overrides or 'no overrides'}; "
                              "regenerate it with `make params`")
        print(f"{target} matches conf/")
        return
    from timbrelab.fsutil import atomic_write_text

    atomic_write_text(target, text)
    print(f"wrote {target} from conf/ {' '.join(args.overrides)}".rstrip())


def _cmd_youtube_resolve(args: argparse.Namespace) -> None:
    from timbrelab.data import youtube

    videos = youtube.resolve(args.queries, max_items=args.max_items, min_duration_s=args.min_duration,
                             max_duration_s=args.max_duration, cookies_file=args.cookies,
                             js_runtimes=args.js_runtime or ["deno"])
    youtube.write_videos_yaml(Path(args.out), args.queries, videos)
    print(f"resolved {len(videos)} videos from {len(args.queries)} queries into {args.out}")
    for video in videos:
        print(f"  {video['id']}  {video.get('duration_s') or '?'} s  {video.get('title', '')}")


def _cmd_cqt_resynth(args: argparse.Namespace) -> None:
    """Any audio -> its log-CQT (the pipeline's settings) -> audio again by Griffin-Lim phase recovery:
    what the CQT keeps and loses, and the no-model baseline of the evaluation."""
    from timbrelab.audio import load_audio
    from timbrelab.audio_out import check_input, check_output, save_audio
    from timbrelab.config import FeaturesConfig, load_params, validate
    from timbrelab.dsp.cqt import griffinlim, log_cqt

    check_input(args.input)
    check_output(args.output, inputs=(args.input,))
    try:
        cfg = validate(load_params().get("features", {}), FeaturesConfig, "features")
    except ConfigError:
        cfg = FeaturesConfig()  # outside a repository: the defaults
    audio, sr = load_audio(args.input, cfg.sample_rate)
    c = cfg.cqt
    kwargs = dict(hop_length=c.hop_length, fmin_hz=c.fmin_hz, bins_per_octave=c.bins_per_octave, n_bins=c.n_bins,
                  log_floor=c.log_floor)
    spectrum = log_cqt(audio, sr, **kwargs)
    out = griffinlim(spectrum, sr, audio.shape[0], n_iter=args.iters or c.griffinlim_iters, **kwargs)
    save_audio(args.output, out, sr)
    print(f"wrote {args.output}: {audio.shape[0] / sr:.2f} s through a {c.n_bins}-bin log-CQT and back")


def _cmd_transfer(args: argparse.Namespace) -> None:
    """Source audio -> the target model's rendition: mono at the model's rate, written atomically in the
    format the output's extension names (16-bit WAV/FLAC, OGG Vorbis, MP3 where libsndfile writes it)."""
    import warnings

    from timbrelab.audio_out import check_input, check_output

    # Before the (slow) model load: the input must be a non-empty file, the output a new name for audio.
    check_input(args.input)
    check_output(args.output, inputs=(args.input, args.checkpoint))
    from timbrelab.inference.loading import load_model
    from timbrelab.models import registry

    model, payload, source = load_model(args.model, checkpoint=args.checkpoint, run_id=args.run_id,
                                        model_uri=args.model_uri)
    family = registry.get(args.model).transfer
    transfer, warning = registry.resolve(f"{family}:transfer_file"), registry.resolve(f"{family}:TransferWarning")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", warning)  # the result's warnings are printed below, once, in the CLI's form
        result = transfer(args.input, args.output, model, payload, octave_shift=args.octave_shift,
                          loudness_shift_db=args.loudness_shift)
    for message in result.warnings:
        print(f"timbrelab: warning: {message}", file=sys.stderr)
    trained = payload.get("train_config") or {}
    domain = trained.get("domain") or trained.get("domain_b") or "the target"
    print(f"wrote {args.output}: {result.seconds:.2f} s mono {result.sample_rate} Hz through {args.model} ({domain}, "
          f"{source}); octave shift {result.octave_shift:+d}"
          f"{' (auto)' if args.octave_shift == 'auto' else ''}, loudness shift {args.loudness_shift:+.1f} dB, "
          f"{len(result.warnings)} warning{'' if len(result.warnings) == 1 else 's'}")


def _octave_shift_arg(value: str) -> str | int:
    """argparse type of --octave-shift: 'auto' or a whole number (kept import-light: no torch here)."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number of octaves, got {value!r}") from None


def _cmd_export(args: argparse.Namespace) -> None:
    """A trained model that streams -> its block-streaming TorchScript module (loadable without timbrelab)."""
    from timbrelab.inference.loading import default_checkpoint
    from timbrelab.models import registry

    spec = registry.get(args.model)
    if spec.export is None:
        streams = [s.name for s in registry.MODELS.values() if s.export]
        raise ConfigError(f"--model {args.model!r} does not stream; export takes one of {', '.join(streams)}")
    checkpoint = Path(args.checkpoint) if args.checkpoint else default_checkpoint(args.model)
    from timbrelab.audio_out import check_output

    check_output(args.output, inputs=(checkpoint,), audio=False)  # a TorchScript file, never over the model
    meta = spec.resolve("export")(checkpoint, Path(args.output), args.block_size)
    total = meta["total_latency_samples"]
    latency = f", latency {total} samples ({1000 * total / meta['sample_rate']:.0f} ms) with live features" \
        if total is not None else ""
    print(f"wrote {args.output}: streaming DDSP from {checkpoint}, blocks of {meta['block_size']} samples at "
          f"{meta['sample_rate']} Hz (hop {meta['hop']}, synth latency {meta['synth_latency_samples']}){latency}")


def _cmd_stage(args: argparse.Namespace) -> None:
    from timbrelab.stages import run_stage_command

    code = run_stage_command(args.name, args.args)
    if code:
        raise SystemExit(code)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="timbrelab", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    params = sub.add_parser("params", help="compose conf/ into params.yaml (or --check that it matches)")
    params.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. profile=tiny prepare.segment_seconds=2")
    params.add_argument("--check", action="store_true", help="fail if params.yaml differs from conf/ composed")
    params.add_argument("--out", help="write here instead of the repository's params.yaml")
    params.set_defaults(func=_cmd_params)

    resolve = sub.add_parser("youtube-resolve", help="turn search queries/playlists into a committed video list")
    resolve.add_argument("queries", nargs="+", help="e.g. 'ytsearch20:bach cello suite' or a playlist URL")
    resolve.add_argument("--out", default="conf/cello/youtube.yaml", help="YAML config whose videos: to write")
    resolve.add_argument("--max-items", type=int, default=None)
    resolve.add_argument("--min-duration", type=float, default=0.0, help="seconds")
    resolve.add_argument("--max-duration", type=float, default=float("inf"), help="seconds")
    resolve.add_argument("--cookies", default=None, help="Netscape cookies.txt, if YouTube asks for it")
    resolve.add_argument("--js-runtime", action="append", help="JavaScript runtime for YouTube (default deno)")
    resolve.set_defaults(func=_cmd_youtube_resolve)

    resynth = sub.add_parser("cqt-resynth", help="audio -> log-CQT -> audio by Griffin-Lim (listen to a CQT)")
    resynth.add_argument("input", help="any audio file (any rate, any channels)")
    resynth.add_argument("-o", "--output", required=True, help="audio to write: .wav, .flac, .ogg (.mp3 where "
                                                                 "libsndfile writes it)")
    resynth.add_argument("--iters", type=int, default=None, help="Griffin-Lim iterations (features.cqt.griffinlim_iters)")
    resynth.set_defaults(func=_cmd_cqt_resynth)

    transfer = sub.add_parser("transfer", help="timbre transfer: play any audio's pitch and loudness on a trained "
                                               "model (mono WAV at the model's rate)")
    transfer.add_argument("input", help="source audio: any format, sample rate and channel count")
    transfer.add_argument("--model", default="ddsp",
                          help="registered model family (ddsp; more to come); unknown names are an error listing "
                               "the choices")
    weights = transfer.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", default=None, help="a model.pt (default: the pipeline's own, e.g. "
                                                            "models/ddsp/model.pt)")
    weights.add_argument("--run-id", default=None, help="an MLflow run id whose model/model.pt artifact to use")
    weights.add_argument("--model-uri", default=None, metavar="URI",
                         help="an MLflow model: models:/timbrelab-ddsp-cello/latest (or /<version>), runs:/<id>/model")
    transfer.add_argument("-o", "--output", required=True,
                          help="audio to write (atomically: nothing on error); the extension picks the format: "
                               ".wav, .flac, .ogg (.mp3 where libsndfile writes it)")
    transfer.add_argument("--octave-shift", type=_octave_shift_arg, default="auto",
                          help="'auto' (nearest the target's mean pitch, the default) or whole octaves, e.g. -1")
    transfer.add_argument("--loudness-shift", type=float, default=0.0, metavar="DB",
                          help="dB added after mapping loudness onto the target's distribution (default 0)")
    transfer.set_defaults(func=_cmd_transfer)

    export = sub.add_parser("export", help="a trained DDSP as a block-streaming TorchScript file (play it live)")
    export.add_argument("--model", default="ddsp", help="registered model family that streams (ddsp)")
    export.add_argument("--checkpoint", default=None, help="a model.pt (default: the pipeline's models/ddsp/model.pt)")
    export.add_argument("-o", "--output", required=True, help="TorchScript file to write (atomically), e.g. ddsp.ts")
    export.add_argument("--block-size", type=int, default=512, metavar="N",
                        help="samples per block, a positive multiple of the hop (default 512)")
    export.set_defaults(func=_cmd_export)

    stage = sub.add_parser("stage", help="run one pipeline stage outside DVC (what dvc.yaml runs)")
    from timbrelab.stages import stage_names

    stage.add_argument("name", choices=stage_names())
    stage.add_argument("args", nargs="*", help="the stage's own arguments (evaluate: the system, e.g. ddsp)")
    stage.set_defaults(func=_cmd_stage)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_main(lambda: args.func(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
