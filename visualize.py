"""visualize.py: a transition's params.json as a plot, a stem timeline and a markdown summary.

    python visualize.py out/transition.json -o plot.png                   # curves by track and stem
    python visualize.py out/transition.json -o plot.png --timeline        # + which stems are audible when
    python visualize.py out/transition.json -o plot.png --audio out/transition.wav   # + a spectrogram
    python visualize.py out/transition.json --summary out.md              # "bar 9: A bass out, B bass in"

The plot has one panel per track and stem (fader and 3-band EQ in dB on the left axis, the
high/low-pass cutoffs in Hz on a log right axis), one per track for the effect sends, and one for
the global controls; every panel carries the beat grid (thin: beats, thick: downbeats), the blend
start and end, and the bar numbers on top (bar 1 = the blend's first bar). The document is
validated against data/report.py's schema first; a bad file is a one-line error and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from data.report import (
    AUDIBLE_DB,
    ParamsError,
    move_note,
    read_params,
    stem_activity,
    summary_markdown,
    validate_params,
)
from effects.params import STEMS, TRACKS

__all__ = ["main", "plot_params", "summary_markdown"]

GAIN_FLOOR_DB = -60.0  # fader amplitudes below this are drawn at it
_EQ_COLOURS = {"gain": "black", "eq_low": "tab:red", "eq_mid": "tab:green", "eq_high": "tab:blue"}
_FILTER_COLOURS = {"hpf": "tab:purple", "lpf": "tab:orange"}
_TRACK_NAMES = {"a": "A (outgoing)", "b": "B (incoming)"}


def _values(doc: dict, name: str) -> np.ndarray:
    return np.asarray(doc["curves"]["params"][name]["values"], dtype=np.float64)


def _db(amplitude: np.ndarray, floor: float = GAIN_FLOOR_DB) -> np.ndarray:
    return np.maximum(20.0 * np.log10(np.maximum(amplitude, 1e-12)), floor)


def _grid(ax, doc: dict, label: bool = False) -> None:
    """Beat and downbeat lines, the blend's start and end, shading where A or B plays alone."""
    lo, hi = ax.get_xlim()
    for key, colour, width in (("beats_s", "0.85", 0.5), ("downbeats_s", "0.6", 0.9)):
        times = [t for t in doc["grid"][key] if lo <= t <= hi]
        if times:  # one LineCollection per panel: thousands of axvline calls take seconds
            ax.vlines(times, 0, 1, transform=ax.get_xaxis_transform(), colors=colour, lw=width, zorder=0)
    start, end = doc["blend"]["start_s"], doc["blend"]["end_s"]
    for t, text in ((start, "blend start (B in)"), (end, "blend end (A out)")):
        ax.axvline(t, color="crimson", lw=1.4, ls="--", zorder=1)
        if label:
            ax.annotate(text, (t, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                        textcoords="offset points", color="crimson", fontsize=8)


def _bars_axis(ax, doc: dict) -> None:
    start, bar = doc["blend"]["start_s"], doc["tempo"]["bar_s"]
    top = ax.secondary_xaxis("top", functions=(lambda t: 1.0 + (t - start) / bar, lambda b: start + (b - 1.0) * bar))
    top.set_xlabel("bar (1 = first bar of the blend)" if not doc["tempo"]["tempo_free"]
                   else "nominal bar (no beat grid)")


def _stem_panel(ax, doc: dict, times: np.ndarray, track: str, stem: str):
    for control, colour in _EQ_COLOURS.items():
        values = _values(doc, f"{track}.{stem}.{control}")
        if control == "gain":
            values = _db(values)
        ax.plot(times, values, color=colour, lw=1.6 if control == "gain" else 1.0,
                label="fader" if control == "gain" else control.replace("_", " "))
    ax.set_ylim(GAIN_FLOOR_DB - 3, 9)
    ax.set_ylabel("dB")
    ax.set_title(f"{_TRACK_NAMES[track]}: {stem}", fontsize=9, loc="left")
    twin = ax.twinx()
    for control, colour in _FILTER_COLOURS.items():
        twin.plot(times, _values(doc, f"{track}.{stem}.{control}"), color=colour, lw=1.0, ls=":",
                  label=f"{control.upper()} cutoff")
    twin.set_yscale("log")
    twin.set_ylim(15, 25_000)
    twin.set_ylabel("Hz")
    return twin


def _sends_panel(ax, doc: dict, times: np.ndarray, track: str) -> None:
    for control, colour in (("reverb_send", "tab:cyan"), ("delay_send", "tab:brown"),
                            ("delay_feedback", "tab:gray")):
        unit = doc["curves"]["params"][f"{track}.{control}"]["unit"]
        ax.plot(times, _values(doc, f"{track}.{control}"), color=colour, lw=1.2,
                label=f"{control.replace('_', ' ')} ({unit})")
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("amplitude / ratio")
    ax.set_title(f"{_TRACK_NAMES[track]}: effect sends", fontsize=9, loc="left")


def _global_panel(ax, doc: dict, times: np.ndarray):
    ax.plot(times, _values(doc, "crossfader"), color="black", lw=1.6, label="crossfader (0 = A, 1 = B)")
    ax.plot(times, _values(doc, "reverb_return"), color="tab:cyan", lw=1.0, label="reverb return (amplitude)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("position / amplitude")
    ax.set_title("global: crossfader, master, reverb", fontsize=9, loc="left")
    twin = ax.twinx()
    twin.plot(times, _values(doc, "master_gain"), color="tab:red", lw=1.0, ls="--", label="master gain (dB)")
    twin.plot(times, _values(doc, "reverb_decay"), color="tab:purple", lw=1.0, ls=":", label="reverb decay RT60 (s)")
    twin.set_ylabel("dB / s")
    twin.set_ylim(-27, 9)
    return twin


def _legend(ax, twin=None) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if twin is not None:
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize=7, loc="lower left", ncol=3, framealpha=0.8)


def _timeline_panel(fig, ax, doc: dict, times: np.ndarray) -> None:
    from data.report import curves_from_params

    u, _ = curves_from_params(doc)
    activity = stem_activity(u)
    rows = [f"{t}.{s}" for t in TRACKS for s in STEMS]
    levels = np.stack([np.clip(_db(activity[r]), -40.0, 0.0) for r in rows])
    step = (times[-1] - times[0]) / max(1, len(times) - 1)
    image = ax.imshow(levels, aspect="auto", cmap="magma", vmin=-40, vmax=0, interpolation="nearest",
                      extent=(times[0] - step / 2, times[-1] + step / 2, len(rows) - 0.5, -0.5))
    for i in range(len(rows)):
        audible = levels[i] > AUDIBLE_DB
        ax.plot(times, np.where(audible, i, np.nan), color="white", lw=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{r[0].upper()} {r[2:]}" for r in rows], fontsize=8)
    ax.set_title(f"who is audible: dry stem level (white line: above {AUDIBLE_DB:g} dB)", fontsize=9, loc="left")
    fig.colorbar(image, ax=ax, pad=0.01, fraction=0.02, label="dB")


def _spectrogram_panel(fig, ax, audio: np.ndarray, sample_rate: int, span: tuple[float, float]) -> None:
    from scipy import signal

    mono = np.asarray(audio, dtype=np.float32)
    mono = mono.mean(axis=0) if mono.ndim == 2 else mono
    i0, i1 = max(0, int(span[0] * sample_rate)), min(len(mono), int(span[1] * sample_rate))
    freqs, frames, spec = signal.stft(mono[i0:i1], sample_rate, nperseg=4096, noverlap=4096 - 1024)
    power = np.abs(spec) ** 2
    bands = np.geomspace(30.0, 16_000.0, 160)
    logspec = np.stack([np.interp(bands, freqs, power[:, k]) for k in range(power.shape[1])], axis=1)
    db = 10.0 * np.log10(np.maximum(logspec, 1e-12))
    image = ax.imshow(db, origin="lower", aspect="auto", cmap="viridis", vmin=db.max() - 80, vmax=db.max(),
                      extent=(i0 / sample_rate + frames[0], i0 / sample_rate + frames[-1], 0, len(bands)))
    ticks = [50, 100, 200, 500, 1000, 2000, 5000, 10000]
    ax.set_yticks([np.interp(np.log(f), np.log(bands), np.arange(len(bands))) for f in ticks])
    ax.set_yticklabels([f"{f // 1000}k" if f >= 1000 else str(f) for f in ticks], fontsize=8)
    ax.set_ylabel("Hz")
    ax.set_title("output spectrogram", fontsize=9, loc="left")
    fig.colorbar(image, ax=ax, pad=0.01, fraction=0.02, label="dB")


def plot_params(doc: dict, path: str | os.PathLike, audio: np.ndarray | None = None, sample_rate: int | None = None,
                timeline: bool = False, dpi: int = 110) -> Path:
    """Draw a params document to an image file (PNG, or any format matplotlib knows by the suffix).

    audio: the transition [2, N] (or [N]) for a spectrogram panel on the same time axis; timeline:
    add the stem-audibility panel. Returns the path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    validate_params(doc)
    times = np.asarray(doc["curves"]["time_s"], dtype=np.float64)
    bar = doc["tempo"]["bar_s"]
    duration = doc["audio"].get("duration_s") or times[-1]
    span = (max(0.0, times[0] - 2 * bar), min(float(duration), times[-1] + 2 * bar))
    extra = [("spectrogram", 2.4)] if audio is not None else []
    extra += [("timeline", 2.2)] if timeline else []
    heights = [h for _, h in extra] + [2.2] * len(STEMS) + [1.8, 1.8]
    n_rows = len(heights)
    height = sum(heights) + 1.6
    fig = plt.figure(figsize=(16, height))
    grid = fig.add_gridspec(n_rows, 2, height_ratios=heights, hspace=0.6, wspace=0.25, left=0.05, right=0.95,
                            top=1.0 - 1.1 / height, bottom=0.6 / height)
    axes = []
    row = 0
    for kind, _ in extra:
        ax = fig.add_subplot(grid[row, :])
        if kind == "spectrogram":
            _spectrogram_panel(fig, ax, audio, int(sample_rate or doc["sample_rate"]), span)
        else:
            _timeline_panel(fig, ax, doc, times)
        axes.append(ax)
        row += 1
    for stem in STEMS:
        for col, track in enumerate(TRACKS):
            ax = fig.add_subplot(grid[row, col])
            twin = _stem_panel(ax, doc, times, track, stem)
            if stem == STEMS[0]:
                _legend(ax, twin)
            axes.append(ax)
        row += 1
    for col, track in enumerate(TRACKS):
        ax = fig.add_subplot(grid[row, col])
        _sends_panel(ax, doc, times, track)
        _legend(ax)
        axes.append(ax)
    row += 1
    ax = fig.add_subplot(grid[row, :])
    twin = _global_panel(ax, doc, times)
    _legend(ax, twin)
    ax.set_xlabel("time in the output (s)")
    axes.append(ax)
    for i, ax in enumerate(axes):
        ax.set_xlim(*span)
        _grid(ax, doc, label=i == 0)
        if i == 0:
            _bars_axis(ax, doc)
    keys, tempo = doc["keys"], doc["tempo"]
    key = keys.get("report") or "keys unknown"
    made = doc["generator"]["kind"] + move_note(doc["generator"])
    fig.suptitle(f"A -> B transition: {doc['blend']['bars']:g} bars at {tempo['bpm']:.1f} BPM, {key}; made by {made}",
                 fontsize=12, y=1.0 - 0.25 / height)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format=path.suffix.lstrip(".") or "png")  # a fixed layout: one draw, not two
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visualize.py", description="Plot and summarise a transition's params.json.")
    parser.add_argument("params", help="params.json written by inference.py")
    parser.add_argument("-o", "--output", default=None, help="plot image (.png, .pdf, .svg); default <params>.png "
                                                             "unless only --summary is asked for")
    parser.add_argument("--timeline", action="store_true", help="add which stems of which track are audible when")
    parser.add_argument("--audio", default=None, help="the transition audio: adds a spectrogram panel")
    parser.add_argument("--summary", default=None, help="write a markdown summary of what happens at which bar")
    return parser


def _check_image_path(path: Path) -> None:
    """ParamsError unless matplotlib can write this file type (checked before anything is written)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = path.suffix.lstrip(".").lower() or "png"
    supported = plt.gcf().canvas.get_supported_filetypes()
    plt.close("all")
    if kind not in supported:
        choices = ", ".join(f".{k}" for k in sorted(supported))
        raise ParamsError(f"{path}: matplotlib cannot write .{kind} images (use one of {choices})")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        output = None
        if args.output or not args.summary:
            output = Path(args.output) if args.output else Path(args.params).with_suffix(".png")
            _check_image_path(output)
        doc = read_params(args.params)
        audio, rate = None, None
        if args.audio:
            from data.audio import AudioError, load_audio

            rate = doc["sample_rate"]
            try:
                audio = load_audio(args.audio, sample_rate=rate, allow_silence=True).numpy()
            except AudioError as error:
                raise ParamsError(str(error)) from None
            expected = doc["audio"].get("n_samples") or (doc["audio"].get("duration_s") or 0.0) * rate
            if expected and abs(audio.shape[-1] - expected) > 0.01 * rate:  # another file than the params describe
                raise ParamsError(f"{args.audio}: lasts {audio.shape[-1] / rate:.2f} s but {args.params} describes "
                                  f"{expected / rate:.2f} s of audio; give the transition these params belong to")
        written = []
        if args.summary:
            summary = Path(args.summary)
            summary.parent.mkdir(parents=True, exist_ok=True)
            tmp = summary.with_name(f".{summary.name}.tmp")
            tmp.write_text(summary_markdown(doc))
            os.replace(tmp, summary)
            written.append(summary)
        if output is not None:
            tmp = output.with_name(f".{output.stem}.tmp{output.suffix}")
            try:
                plot_params(doc, tmp, audio=audio, sample_rate=rate, timeline=args.timeline)
                os.replace(tmp, output)
            finally:
                tmp.unlink(missing_ok=True)
            written.append(output)
    except ParamsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # an output folder that cannot be made, a full disk: one line
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
