"""``report.html``: a screening study to look at, in one self-contained file (images embedded).

Sections: the QC counts with their reasons and how the files were read; per-muscle volume
distributions; left/right asymmetry; groups by sex and by age band where the files say them; a
gallery of the flagged images with their overlays. Every figure is a PNG embedded as a data URI,
so the file can be mailed or archived alone. A small script counts the figures that decoded and
writes the count into ``<body data-figures-loaded=…>``, which a headless browser check reads.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from xraymuscle.atomic import write_text_atomic
from xraymuscle.model import LoadedModel

AGE_BANDS = ((0, 18, "<18"), (18, 40, "18-39"), (40, 60, "40-59"), (60, 80, "60-79"), (80, 200, "80+"))
GALLERY_MAX = 60
MEASURED = ("ok", "uncertain")


def write_report(path: Path, rows: Sequence[dict[str, Any]], model: LoadedModel, *, title: str) -> Path:
    """Write the study's report to ``path`` (atomically) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    muscles = model.muscles
    measured = [
        r for r in rows if r.get("status") in MEASURED and r.get(f"volume_ml__{muscles[0]}") is not None
    ]
    sections = [
        _qc_section(rows),
        _distribution_section(measured, muscles),
        _asymmetry_section(measured, muscles),
        _groups_section(measured, muscles),
        _gallery_section(rows, path.parent),
    ]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    notice = html.escape(model.notice) if model.notice else ""
    body = "\n".join(sections)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1200px; color: #222; }}
h1 {{ margin-bottom: 0.2em; }}
h2 {{ border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }}
.notice {{ background: #fff3cd; border: 1px solid #e0c36a; padding: 0.6em 1em; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
img.figure {{ max-width: 100%; }}
.gallery {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.gallery figure {{ margin: 0; width: 360px; }}
.gallery img {{ width: 360px; }}
figcaption {{ font-size: 0.8em; word-break: break-all; }}
</style></head>
<body data-figures-loaded="pending">
<h1>{html.escape(title)}</h1>
<p>{len(rows)} radiographs; report written {when}; model {html.escape(str(model.path))}.</p>
{f'<p class="notice">Model notice: {notice}</p>' if notice else ""}
{body}
<script>
window.addEventListener("load", function () {{
  var imgs = Array.prototype.slice.call(document.querySelectorAll("img"));
  var ok = imgs.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }}).length;
  document.body.dataset.figuresLoaded = ok + "/" + imgs.length;
}});
</script>
</body></html>
"""
    write_text_atomic(path, page)
    return path


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(data_b64: str, alt: str, cls: str = "figure") -> str:
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="data:image/png;base64,{data_b64}">'


def _qc_section(rows: Sequence[dict[str, Any]]) -> str:
    counts = Counter(r.get("status", "") for r in rows)
    reasons = Counter(
        (r.get("status", ""), re.sub(r"\d+(\.\d+)?", "#", str(r.get("reason") or "")))
        for r in rows
        if r.get("status") != "ok"
    )
    duplicates = sum(1 for r in rows if r.get("duplicate_of"))
    status_rows = "".join(
        f"<tr><td>{html.escape(s)}</td><td>{n}</td></tr>" for s, n in sorted(counts.items())
    )
    reason_rows = "".join(
        f"<tr><td>{html.escape(s)}</td><td>{html.escape(reason)}</td><td>{n}</td></tr>"
        for (s, reason), n in reasons.most_common()
    )
    # how the files were read (the notes column), each kind of note counted once per radiograph
    read = Counter(
        kind
        for r in rows
        for kind in {re.sub(r"\d+(\.\d+)?", "#", n.strip()) for n in str(r.get("notes") or "").split("; ")}
        if kind
    )
    read_rows = "".join(
        f"<tr><td>{html.escape(kind)}</td><td>{n}</td></tr>" for kind, n in read.most_common()
    )
    return (
        '<h2 id="qc">Quality control</h2>'
        f"<table><tr><th>status</th><th>radiographs</th></tr>{status_rows}</table>"
        + _spacing_table(rows)
        + f"<p>{duplicates} files have the same content as an earlier file "
        "(see <code>duplicate_of</code>).</p>"
        + (
            f"<table><tr><th>status</th><th>reason</th><th>radiographs</th></tr>{reason_rows}</table>"
            if reason_rows
            else ""
        )
        + (
            "<p>How the files were read (the <code>notes</code> column):</p>"
            f"<table><tr><th>note</th><th>radiographs</th></tr>{read_rows}</table>"
            if read_rows
            else ""
        )
    )


def _spacing_table(rows: Sequence[dict[str, Any]]) -> str:
    """The pixel spacing each source gave (the file's tags, the user, a calibration marker): a
    scanner whose files all read one odd spacing, or a marker found at a magnification no hip
    has, stands out here before it does in the volumes."""
    spacings: dict[str, list[float]] = {}
    for r in rows:
        value = r.get("pixel_spacing_mm")
        if value not in (None, ""):
            spacings.setdefault(str(r.get("spacing_source") or "unknown"), []).append(float(value))
    if not spacings:
        return ""
    lines = "".join(
        f"<tr><td>{html.escape(source)}</td><td>{len(v)}</td><td>{np.median(v):.4f}</td>"
        f"<td>{min(v):.4f} – {max(v):.4f}</td></tr>"
        for source, v in sorted(spacings.items(), key=lambda item: -len(item[1]))
    )
    return (
        "<p>Pixel spacing at the hip (mm), by where it came from:</p><table><tr><th>source</th>"
        f"<th>radiographs</th><th>median</th><th>range</th></tr>{lines}</table>{_spacing_sd_line(rows)}"
    )


def _spacing_sd_line(rows: Sequence[dict[str, Any]]) -> str:
    """Whether the volumes' sds carry a pixel spacing sd (``--spacing-sd-percent``, or a study
    list's per-file one), and which, for how many radiographs."""
    given = Counter(
        float(r["spacing_sd_percent"]) for r in rows if r.get("spacing_sd_percent") not in (None, "")
    )
    without = sum(
        1 for r in rows if r.get("ood_score") not in (None, "") and r.get("spacing_sd_percent") in (None, "")
    )
    where = "--spacing-sd-percent or the study list"
    if not given:
        return "<p>The volumes' sds take the pixel spacing as exact (no --spacing-sd-percent).</p>"
    if len(given) == 1 and not without:
        return f"<p>The volumes' sds include a pixel spacing sd of {next(iter(given)):g} % ({where}).</p>"
    counts = ", ".join(f"{v:g} %: {n}" for v, n in sorted(given.items()))
    others = f"; those of the other {without} take the spacing as exact" if without else ""
    return (
        f"<p>The volumes' sds of {sum(given.values())} radiographs include a pixel spacing sd "
        f"({counts}; {where}){others}.</p>"
    )


def _volumes(rows: Sequence[dict[str, Any]], muscle: str, prefix: str = "volume_ml__") -> np.ndarray:
    """The volumes of a muscle (or, with ``prefix`` ``group_volume_ml__``, of a muscle group)."""
    key = f"{prefix}{muscle}"
    return np.array([float(r[key]) for r in rows if r.get(key) not in (None, "")])


def _distribution_section(rows: Sequence[dict[str, Any]], muscles: list[str]) -> str:
    import matplotlib.pyplot as plt

    if not rows:
        return '<h2 id="distributions">Volumes</h2><p>No radiograph was measured.</p>'
    data = [_volumes(rows, m) for m in muscles]
    fig, ax = plt.subplots(figsize=(11, 4.2))
    ax.boxplot(data, showfliers=True)
    ax.set_xticks(range(1, len(muscles) + 1), [m.replace("_", " ") for m in muscles], rotation=40, ha="right")
    ax.set_ylabel("volume (ml)")
    ax.set_title(f"Muscle volumes, {len(rows)} measured radiographs")
    # the muscles, then the muscle groups (their summed volumes) where the table has them
    groups = sorted(
        {k[len("group_volume_ml__") :] for r in rows for k in r if k.startswith("group_volume_ml__")}
    )
    lines = [(m, v, "") for m, v in zip(muscles, data, strict=True)]
    lines += [(g, _volumes(rows, g, "group_volume_ml__"), "group_") for g in groups]
    table = "".join(
        f"<tr><td>{html.escape(name)}{' (group)' if kind else ''}</td><td>{len(v)}</td>"
        f"<td>{np.median(v):.0f}</td><td>{np.percentile(v, 25):.0f}–{np.percentile(v, 75):.0f}</td>"
        f"{_precision_cells(rows, name, kind)}</tr>"
        for name, v, kind in lines
        if len(v)
    )
    return (
        '<h2 id="distributions">Volumes</h2>'
        + _img(_png(fig), "per-muscle volume distributions")
        + "<table><tr><th>muscle</th><th>n</th><th>median (ml)</th><th>IQR (ml)</th>"
        "<th>median sd (ml)</th><th>median sd / volume</th><th>reliability</th></tr>"
        f"{table}</table>"
        "<p>The reliability is the share of the volumes' variance between radiographs that the sds "
        "do not account for, <code>1 − mean(sd²) / variance</code>: near 1, the study's "
        "radiographs are told apart by their muscles; near 0 (or below), by the measurement's own error "
        "(empty for fewer than 3 radiographs).</p>"
    )


def _precision_cells(rows: Sequence[dict[str, Any]], muscle: str, kind: str = "") -> str:
    """The cells of a muscle's (``kind`` ``group_``: a muscle group's) median sd, median sd over
    volume, and reliability."""
    volume_key, sd_key = f"{kind}volume_ml__{muscle}", f"{kind}volume_sd_ml__{muscle}"
    pairs = np.array(
        [
            (float(r[volume_key]), float(r[sd_key]))
            for r in rows
            if r.get(volume_key) not in (None, "") and r.get(sd_key) not in (None, "")
        ]
    ).reshape(-1, 2)
    if not len(pairs):
        return "<td></td><td></td><td></td>"
    volume, sd = pairs[:, 0], pairs[:, 1]
    relative = np.median(sd / np.maximum(volume, 1e-6))
    reliability = ""
    if len(pairs) >= 3 and np.var(volume, ddof=1) > 0:
        reliability = f"{1 - np.mean(sd**2) / np.var(volume, ddof=1):.2f}"
    return f"<td>{np.median(sd):.1f}</td><td>{100 * relative:.1f} %</td><td>{reliability}</td>"


def _pairs(muscles: list[str]) -> list[tuple[str, str, str]]:
    out = []
    for m in muscles:
        if m.endswith("_left") and m[: -len("_left")] + "_right" in muscles:
            base = m[: -len("_left")]
            out.append((base, m, base + "_right"))
    return out


def _asymmetry_section(rows: Sequence[dict[str, Any]], muscles: list[str]) -> str:
    import matplotlib.pyplot as plt

    pairs = _pairs(muscles)
    if not rows or not pairs:
        return '<h2 id="asymmetry">Left/right asymmetry</h2><p>Nothing to compare.</p>'
    data = []
    for _, left, right in pairs:
        lv, rv = _volumes(rows, left), _volumes(rows, right)
        data.append(200 * (lv - rv) / np.maximum(lv + rv, 1e-6))
    fig, ax = plt.subplots(figsize=(11, 4.0))
    ax.boxplot(data, showfliers=True)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(
        range(1, len(pairs) + 1), [b.replace("_", " ") for b, _, _ in pairs], rotation=30, ha="right"
    )
    ax.set_ylabel("(left − right) / mean, %")
    ax.set_title("Left/right asymmetry")
    return '<h2 id="asymmetry">Left/right asymmetry</h2>' + _img(_png(fig), "left/right asymmetry")


def _age_band(age: Any) -> str:
    if age is None or age == "":
        return ""
    for lo, hi, name in AGE_BANDS:
        if lo <= float(age) < hi:
            return name
    return ""


def _groups_section(rows: Sequence[dict[str, Any]], muscles: list[str]) -> str:
    import matplotlib.pyplot as plt

    head = '<h2 id="groups">Groups by sex and age</h2>'
    if not rows:
        return head + "<p>No radiograph was measured.</p>"
    gluteal = [m for m in muscles if m.startswith("gluteus")] or muscles
    total = {id(r): sum(float(r[f"volume_ml__{m}"]) for m in gluteal) for r in rows}
    label = "gluteal muscles together" if gluteal is not muscles else "all muscles together"
    parts = []
    for key, title, order in (
        ("sex", "by sex", ["F", "M", "O"]),
        ("age_band", "by age band", [b for _, _, b in AGE_BANDS]),
    ):
        groups: dict[str, list[float]] = {}
        for r in rows:
            g = _age_band(r.get("age_years")) if key == "age_band" else (r.get("sex") or "")
            if g:
                groups.setdefault(g, []).append(total[id(r)])
        if not groups:
            parts.append(f"<p>No radiograph says its patient's {'sex' if key == 'sex' else 'age'}.</p>")
            continue
        names = [g for g in order if g in groups]
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.boxplot([groups[g] for g in names])
        ax.set_xticks(range(1, len(names) + 1), [f"{g}\n(n={len(groups[g])})" for g in names])
        ax.set_ylabel(f"volume, {label} (ml)")
        ax.set_title(title)
        parts.append(_img(_png(fig), f"volumes {title}"))
    unknown = sum(1 for r in rows if not r.get("sex"))
    return head + "".join(parts) + f"<p>{unknown} measured radiographs do not say the patient's sex.</p>"


def _gallery_section(rows: Sequence[dict[str, Any]], folder: Path) -> str:
    flagged = [r for r in rows if r.get("status") != "ok" and r.get("overlay")]
    head = '<h2 id="gallery">Flagged radiographs</h2>'
    if not flagged:
        return head + "<p>No flagged radiograph has an overlay (those that could not be read have none).</p>"
    items = []
    for r in flagged[:GALLERY_MAX]:
        picture = folder / str(r["overlay"])
        if not picture.is_file():
            continue
        data = base64.b64encode(picture.read_bytes()).decode("ascii")
        caption = f"{r['status']}: {r.get('reason') or ''} — {Path(str(r['image'])).name}"
        items.append(
            f"<figure>{_img(data, caption, 'overlay')}"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    more = (
        f"<p>{len(flagged) - GALLERY_MAX} more flagged radiographs are in the table.</p>"
        if len(flagged) > GALLERY_MAX
        else ""
    )
    return head + f'<div class="gallery">{"".join(items)}</div>' + more
