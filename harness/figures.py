"""Figures drawn with Debian's gnuplot, as SVG.

timeline(): the demo's picture, the migration states of both sides and
the link's health along time, one panel per act.
bench(): the bench's picture, failure detection, guest stall and
recovery bytes, ours next to QEMU 7.2, from the bench's results.

Each writes an SVG, or a PNG if the path ends in .png, and returns its
path; without gnuplot (make deps
installs gnuplot-nox) it raises FigureError.
"""

import os
import shutil
import subprocess
import tempfile


class FigureError(Exception):
    pass


# Colours of the migration states, and of the link
COLOURS = {
    "active": "#9ecae1",                # precopy
    "postcopy-active": "#31a354",
    "postcopy-paused": "#de2d26",
    "postcopy-recover": "#fd8d3c",
    "completed": "#bdbdbd",
    "link up": "#74c476",
    "link down": "#252525",
}
# How a state is named in the legend, if not by its name
LABELS = {"active": "active (precopy)"}
OURS = "#2b8cbe"
REF = "#e6550d"


def _gnuplot(script, path):
    if not shutil.which("gnuplot"):
        raise FigureError("gnuplot is missing (make deps installs "
                          "gnuplot-nox)")
    proc = subprocess.run(["gnuplot"], input=script, text=True,
                          capture_output=True, timeout=60)
    if proc.returncode or not os.path.getsize(path):
        raise FigureError(f"gnuplot failed: {proc.stderr.strip()}")
    return path


def _terminal(path, width, height):
    """The gnuplot terminal for @path: SVG, or PNG for a .png"""
    if path.endswith(".png"):
        return (f"set terminal pngcairo size {width},{height} "
                "font 'sans,10' background '#ffffff'")
    return (f"set terminal svg size {width},{height} dynamic "
            "font 'sans,12' background '#ffffff'")


def _quote(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _segments(history, t0, t_end):
    """(start, end, state) of a side's @history of (time, state), from
    @t0 to @t_end, states outside COLOURS left out"""
    out = []
    for i, (t, st) in enumerate(history):
        end = history[i + 1][0] if i + 1 < len(history) else t_end
        if st in COLOURS and end > t0:
            out.append((max(t, t0) - t0, end - t0, st))
    return out


def timeline(path, acts, title):
    """@acts: (title, t0, t_end, source history, destination history,
    link downs as (down, up or None)) per panel; times in seconds of one
    clock, histories lists of (time, state)."""
    with tempfile.TemporaryDirectory(prefix="figure-") as tmp:
        lines = [_terminal(path, 960, 110 + 190 * len(acts)),
                 f"set output {_quote(path)}",
                 f"set multiplot layout {len(acts)},1 title {_quote(title)}",
                 "set style fill solid 1.0 noborder",
                 "set yrange [0.4:3.6]",
                 "set ytics ('link' 1, 'destination' 2, 'source' 3) "
                 "scale 0",
                 "set xlabel 'seconds'",
                 "set grid xtics",
                 "set key outside right top box opaque"]
        for n, (panel, t0, t_end, src, dst, downs) in enumerate(acts):
            data = os.path.join(tmp, f"act{n}.dat")
            rows = []
            for y, hist in ((3, src), (2, dst)):
                rows += [(y, a, b, st) for a, b, st in
                         _segments(hist, t0, t_end)]
            up_from = 0.0
            for down, up in downs:
                down -= t0
                up = (up if up is not None else t_end) - t0
                rows.append((1, up_from, down, "link up"))
                rows.append((1, down, up, "link down"))
                up_from = up
            rows.append((1, up_from, t_end - t0, "link up"))
            with open(data, "w") as f:
                for y, a, b, st in rows:
                    if b > a:
                        f.write(f"{y} {a:.4f} {b:.4f} "
                                f"{int(COLOURS[st][1:], 16)}\n")
            keys = ", ".join(f"keyentry with boxes fc rgb '{c}' "
                             f"title {_quote(LABELS.get(st, st))}"
                             for st, c in COLOURS.items())
            lines += [f"set title {_quote(panel)}",
                      f"set xrange [0:{t_end - t0:.3f}]",
                      f"plot {_quote(data)} using (($2+$3)/2):1:"
                      "(($3-$2)/2):(0.32):4 with boxxyerror "
                      f"lc rgb variable notitle, {keys}"]
        lines.append("unset multiplot")
        return _gnuplot("\n".join(lines) + "\n", path)


def _bars(tmp, name, rows, scale, floor):
    """A data file of (label, ours median/min/max, 7.2 median/min/max)
    per @rows entry (label, ours summary, 7.2 summary or text); a text
    or missing figure is drawn at the top of the axis, and listed"""
    path = os.path.join(tmp, name)
    never = []
    with open(path, "w") as f:
        for i, (label, ours, ref) in enumerate(rows):
            vals = []
            for j, s in enumerate((ours, ref)):
                if isinstance(s, dict):
                    vals += [max(floor, s[k] * scale)
                             for k in ("median", "min", "max")]
                else:
                    vals += ["NaN"] * 3
                    never.append((i, j))
            f.write(_quote(label) + " " +
                    " ".join(str(v) for v in vals) + "\n")
    return path, never


def bench(path, results, machine):
    """The bench's figure from its @results (bench/recovery-bench.py);
    None if they hold nothing it draws."""
    detection, stall, sizes = [], [], []
    for fault, name in (("reset", "reset"), ("black-hole", "black hole"),
                        ("nft-drop", "nft drop")):
        rows = results.get(f"detection/{fault}")
        if not rows:
            continue
        for side, short in (("source", "src"), ("destination", "dst")):
            detection.append((f"{name} {short}", rows.get(f"ours, {side}"),
                              rows.get(f"7.2, {side}")))
    for key, rows in results.items():
        if key.startswith("stall/outage-"):
            label = key.split("-", 1)[1]
            stall.append((f"down {label}", rows.get("ours (automatic)"),
                          rows.get("7.2 (instant operator)")))
        if key.startswith("bytes/"):
            sizes.append((key.split("/", 1)[1].replace("GiB", " GiB"),
                          rows.get("ours (return path, resume to active)"),
                          rows.get("7.2 (return path, resume to active)")))
    panels = [p for p in (detection, stall, sizes) if p]
    if not panels:
        return None
    with tempfile.TemporaryDirectory(prefix="figure-") as tmp:
        lines = [_terminal(path, 960, 80 + 330 * len(panels)),
                 f"set output {_quote(path)}",
                 f"set multiplot layout {len(panels)},1 title "
                 f"{_quote('Postcopy recovery, ours vs QEMU 7.2: ' + machine)}"
                 " font 'sans,11'",
                 "set style data histogram",
                 "set style histogram errorbars gap 1 lw 1",
                 "set style fill solid 0.85 border -1",
                 "set key top left",
                 "set grid ytics",
                 "set xtics scale 0"]
        if detection:
            top = 1e5
            data, never = _bars(tmp, "detection.dat", detection, 1000.0,
                                0.1)
            lines += ["set title 'Failure detection: from the fault to "
                      "postcopy-paused (median, min-max; log scale)'",
                      "set logscale y", f"set yrange [0.1:{top}]",
                      "set ylabel 'ms'"]
            for i, j in never:
                lines.append(f"set label {i * 10 + j + 1} 'never' at "
                             f"{i - 0.17 + 0.34 * j:.2f},3000 center "
                             "rotate by 90 textcolor rgb '#b30000'")
            lines.append(
                f"plot {_quote(data)} using 2:3:4:xtic(1) title "
                f"'ours (postcopy-link-timeout 2 s)' lc rgb '{OURS}', "
                f"'' using 5:6:7 title 'QEMU 7.2' lc rgb '{REF}'")
            lines += ["unset label", "unset logscale y"]
        if stall:
            data, _ = _bars(tmp, "stall.dat", stall, 1.0, 0.0)
            lines += ["set title " + _quote("Guest stall: from the link's "
                                            "return to postcopy-active on "
                                            "both sides (median, min-max)"),
                      "set yrange [0:*]", "set ylabel 's'",
                      f"plot {_quote(data)} using 2:3:4:xtic(1) title "
                      f"'ours, automatic recovery' lc rgb '{OURS}', "
                      "'' using 5:6:7 title 'QEMU 7.2, an operator who "
                      f"types instantly (idealised)' lc rgb '{REF}'"]
        if sizes:
            data, _ = _bars(tmp, "bytes.dat", sizes, 1.0, 1.0)
            lines += ["set title 'Bytes from the destination for one "
                      "recovery, failure halfway through postcopy "
                      "(log scale)'",
                      "set logscale y", "set yrange [10:1e7]",
                      "set ylabel 'bytes'",
                      f"plot {_quote(data)} using 2:3:4:xtic(1) title "
                      f"'ours (run-length encoded bitmap)' lc rgb '{OURS}', "
                      "'' using 5:6:7 title 'QEMU 7.2 (plain bitmap)' "
                      f"lc rgb '{REF}'",
                      "unset logscale y"]
        lines.append("unset multiplot")
        return _gnuplot("\n".join(lines) + "\n", path)
