"""report.html: one self-contained page (charts embedded as PNG data URIs) for people who
would rather look than read JSON."""

from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt


def render(report: dict) -> str:
    parts = [
        _head(report),
        _section("Accuracy and latency by stage", _stage_chart(report)),
        _section("Channel widths before and after pruning", _widths_chart(report)),
        _section("ExecuTorch op-time breakdown", _op_breakdown(report)),
        _section("Scorecard: measured and estimated", _scorecard(report)),
        _section("Device estimates, in words", _device_words(report)),
        _section("Parity of every exported file", _parity_table(report)),
        _section("Confidence calibration", _reliability(report)),
    ]
    if report.get("gate") is not None:
        parts.append(_section("Budgets", _gate_table(report["gate"])))
    if report.get("arm64") is not None:
        parts.append(
            _section(
                "On aarch64 (emulated: numerics and delegation, not speed)",
                _arm64_table(report["arm64"]),
            )
        )
    parts.append(_FOOT)
    return "\n".join(parts)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img class="chart" alt="chart" src="data:image/png;base64,{data}">'


def _stage_chart(report: dict) -> str:
    names, accs, colors = [], [], []
    for stage, st in report["stages"].items():
        if "accuracy" in st:
            names.append(stage)
            accs.append(100 * st["accuracy"]["value"])
            colors.append("#8aa")
    lat_names, lats = [], []
    for b in report["backends"].values():
        acc = b.get("parity", {}).get("file_accuracy")
        if acc:
            names.append(f"{b['file']}\n({b['precision']})")
            accs.append(100 * acc["value"])
            colors.append("#36c")
        if b.get("latency"):
            lat_names.append(f"{b['file']}\n({b['latency'][0]['settings']['threads']} thr)")
            lats.append(b["latency"][0]["p50"]["value"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    a1.bar(range(len(names)), accs, color=colors)
    a1.set_xticks(range(len(names)), names, fontsize=8)
    a1.set_ylabel("test accuracy, % (measured)")
    a1.set_ylim(max(0, min(accs) - 10) if accs else 0, 100)
    for i, v in enumerate(accs):
        a1.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    if lats:
        a2.bar(range(len(lats)), lats, color="#c63")
        a2.set_xticks(range(len(lats)), lat_names, fontsize=8)
    a2.set_ylabel("p50 latency, ms (measured on this host)")
    text = (
        "Grey: PyTorch models per stage; blue: each exported file run through its own "
        "runtime. Latency: batch 1, after warm-up."
    )
    return _png(fig) + f"<p>{text}</p>"


def _widths_chart(report: dict) -> str:
    widths = report["stages"].get("pruned", {}).get("widths")
    if not widths:
        return "<p>No pruning stage in this run.</p>"
    other = report["stages"]["pruned"].get("student_model")
    if other:
        return (
            f"<p>Not pruned: the student is another architecture ({other}, "
            "distill.student_model); its layers have other names than the teacher's.</p>"
        )
    layers = list(widths["before"])
    fig, ax = plt.subplots(figsize=(11, 3.2))
    x = range(len(layers))
    after = [widths["after"][n]["value"] if n in widths["after"] else 0 for n in layers]
    ax.bar(
        [i - 0.2 for i in x],
        [widths["before"][n]["value"] for n in layers],
        0.4,
        label="dense teacher",
    )
    ax.bar([i + 0.2 for i in x], after, 0.4, label="pruned")
    ax.set_xticks(list(x), layers, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("output channels (counted)")
    ax.legend()
    return _png(fig) + _group_notes(report["stages"]["pruned"].get("groups"))


def _group_notes(groups: dict | None) -> str:
    """The channel groups the plan could not cut, cut as far as allowed, or not check, and
    the residual blocks it removed."""
    if not groups:
        return ""
    items = (
        [
            f"<li>{html.escape(k)}: {what}, {html.escape(v)}</li>"
            for what, key in (("kept its width", "frozen"), ("not verified", "unverified"))
            for k, v in groups[key].items()
        ]
        + [
            f"<li>{html.escape(k)}: cut to its floor (prune.min_width)</li>"
            for k in groups["floored"]
        ]
        + [
            f"<li>{html.escape(k)}: residual block removed, its skip path kept</li>"
            for k in groups.get("removed_blocks", [])
        ]
    )
    verified = f"<p>{len(groups['verified'])} channel group(s) verified exactly.</p>"
    return verified + (f"<ul>{''.join(items)}</ul>" if items else "")


def _op_breakdown(report: dict) -> str:
    for b in report["backends"].values():
        rows = [
            r
            for r in (b.get("op_breakdown") or {}).get("rows", [])
            if r.get("block") == "Execute" and r["name"] != "Method::execute"
        ]
        if rows:
            top = sorted(rows, key=lambda r: -r["p50"]["value"])[:12]
            fig, ax = plt.subplots(figsize=(9, 0.35 * len(top) + 1))
            ax.barh(
                [r["name"] for r in top][::-1], [r["p50"]["value"] for r in top][::-1], color="#693"
            )
            ax.set_xlabel(
                f"p50 time per inference, ms ({b['file']}, measured by ExecuTorch's "
                "profiler, ETDump)"
            )
            return _png(fig)
    return "<p>No ExecuTorch op-time breakdown in this report.</p>"


def _scorecard(report: dict) -> str:
    head = "<tr><th>file</th><th>figure</th><th>value</th><th>source</th><th>on</th></tr>"
    rows = []
    for b in report["backends"].values():
        if "file" not in b:
            continue
        figs = [("size", b.get("bytes"))]
        for lat in b.get("latency") or []:
            figs += [
                (f"p50 latency ({lat['settings']['threads']} thr)", lat["p50"]),
                (f"p90 latency ({lat['settings']['threads']} thr)", lat["p90"]),
            ]
        for key in ("peak_rss", "planned_bytes"):
            figs.append((key.replace("_", " "), (b.get("memory") or {}).get(key)))
        for dev, est in (b.get("estimates") or {}).items():
            if not isinstance(est, dict) or "latency" not in est:
                continue
            for t, block in est["latency"].items():
                figs.append((f"{dev} latency ({t} thr)", block.get("latency")))
                figs.append((f"{dev} latency range ({t} thr)", block.get("range")))
            figs.append((f"{dev} energy", est.get("energy")))
            val = est.get("validation") or {}
            figs.append(
                (
                    (
                        f"{dev}: |error| median on published latencies ({val.get('state')}, "
                        f"device {val.get('rests_on')})"
                    ),
                    val.get("median_abs_error"),
                )
            )
        for label, f in figs:
            if f:
                rows.append(
                    f"<tr><td>{html.escape(b['file'])}</td><td>{html.escape(label)}</td>"
                    f"<td>{f['value']} {html.escape(str(f.get('unit', '')))}</td>"
                    f"<td class='{f['source']}'>{f['source']}</td>"
                    f"<td>{html.escape(str(f.get('on', '')))}</td></tr>"
                )
    return f"<table>{head}{''.join(rows)}</table>"


def _device_words(report: dict) -> str:
    from pipeline.device_words import estimate_sentences

    lines = estimate_sentences(report)
    if not lines:
        return "<p>No device estimates in this report.</p>"
    return "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>"


def _reliability(report: dict) -> str:
    from pipeline.reliability_plot import reliability_png

    per = {
        k: st["reliability_data"]
        for k, st in report["stages"].items()
        if st.get("reliability_data")
    }
    per.update(
        {
            b["file"]: b["reliability_data"]
            for b in report["backends"].values()
            if b.get("reliability_data")
        }
    )
    if not per:
        return "<p>No calibration figures in this report.</p>"
    data = base64.b64encode(reliability_png(per)).decode()
    t = report["stages"].get("temperature", {})
    note = (
        f"<p>Temperature: fitted {t['temperature_fitted']['value']:.3f} on the validation "
        f"split, applied {t['temperature_applied']['value']:.3f} "
        f"({html.escape(t['decision'])}). "
        "Reliability diagrams on the test split (measured); the 'temperature' panel shows "
        "the distilled student before (bars) and after (outline) scaling by the fitted T.</p>"
        if t
        else ""
    )
    return (
        f'<img class="chart" alt="reliability diagrams" src="data:image/png;base64,{data}">' + note
    )


def _parity_table(report: dict) -> str:
    head = (
        "<tr><th>file</th><th>precision</th><th>state</th><th>accuracy</th>"
        "<th>SQNR dB</th><th>top-1 agreement</th><th>max |diff|</th></tr>"
    )
    rows = []
    for name, b in report["backends"].items():
        if "error" in b:
            rows.append(
                f"<tr><td>{name}</td><td>{b['precision']}</td><td class='fail'>export "
                f"failed</td><td colspan=4>{html.escape(b['error'])}</td></tr>"
            )
            continue
        p = b["parity"]
        t = p.get("test_split", {})
        val = lambda f, fmt: fmt.format(f["value"]) if f else "-"
        rows.append(
            f"<tr><td>{b['file']}</td><td>{b['precision']}</td>"
            f"<td class='{p['state']}'>{p['state']}</td>"
            f"<td>{val(p.get('file_accuracy'), '{:.2%}')}</td>"
            f"<td>{val(t.get('sqnr_db'), '{:.1f}')}</td>"
            f"<td>{val(t.get('top1_agreement'), '{:.3f}')}</td>"
            f"<td>{val(t.get('max_abs_diff'), '{:.3g}')}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _gate_table(lines: list[dict]) -> str:
    head = "<tr><th>budget line</th><th>value</th><th>limit</th><th>verdict</th></tr>"
    rows = [
        f"<tr><td>{html.escape(ln['name'])}</td><td>{ln['value']}</td><td>{ln['limit']}</td>"
        f"<td class='{ln['verdict']}'>{ln['verdict']} {html.escape(ln['why'])}</td></tr>"
        for ln in lines
    ]
    return f"<table>{head}{''.join(rows)}</table>"


def _arm64_table(a: dict) -> str:
    """verify-arm64's block (pipeline/verify_arm64.py): one row per bundle file."""
    head = (
        "<tr><th>file</th><th>state</th><th>max |diff| vs host</th><th>top-1 agreement</th>"
        "<th>problems</th></tr>"
    )
    rows = []
    for f in a["files"].values():
        g = f.get("golden") or {}
        diff, top1 = (
            (f"{g['max_abs_diff']['value']:.3g}", f"{g['top1_agreement']['value']:.3f}")
            if g
            else ("-", "-")
        )
        why = "; ".join(f["problems"]) or f.get("why_not_run", "")
        rows.append(
            f"<tr><td>{html.escape(f['file'])}</td><td class='{f['state']}'>"
            f"{f['state']}</td><td>{diff}</td><td>{top1}</td>"
            f"<td>{html.escape(why)}</td></tr>"
        )
    m = a["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in a["versions"].items())
    return (
        f"<p>{html.escape(m['emulator'])}, -cpu {html.escape(m['cpu'])}; {html.escape(versions)}"
        f"; {html.escape(a['inputs'])}</p><table>{head}{''.join(rows)}</table>"
    )


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def _head(report: dict) -> str:
    status = "all checks passed" if report["ok"] else "FAILED: " + "; ".join(report["problems"])
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>slimship report: {html.escape(report["target"])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 6px;font-size:13px}}
.verified,.verified-arm64,.pass{{color:#060}}.failed,.fail{{color:#a00}}.structurally-checked-only{{color:#a60}}
.estimated{{color:#a60}}img.chart{{max-width:100%}}</style></head><body>
<h1>slimship: {html.escape(report["model"]["name"])} for {html.escape(report["target"])}</h1>
<p class="{"pass" if report["ok"] else "fail"}">{html.escape(status)}</p>
<p>{html.escape(report["created"])}; data {html.escape(report["data"]["name"])}; every figure
says whether it was measured, estimated or counted.</p>"""


# After load: count decoded charts so a headless browser can confirm the page rendered.
_FOOT = """<p id="render-check">not rendered</p>
<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.getElementById("render-check").textContent =
    "charts decoded: " + ok + " of " + imgs.length;
});
</script></body></html>"""
