"""report.json and the printed summary. Every figure says where it came from:
{"value": 0.97, "unit": "top1", "source": "measured" | "estimated" | "counted", "on": "..."};
its value is a number (or None), or an array of them (one figure per fold, say). An object whose
numbers are arrays or tables (a reliability diagram's bins) carries one "source", "unit" and
"on" itself, and no "value". Settings the run was asked for sit under "settings"; the stages'
info becomes figures in pipeline/report_figures.py."""

from __future__ import annotations

SOURCES = ("measured", "estimated", "counted")


def fig(value, unit: str, source: str, on: str) -> dict:
    assert source in SOURCES, source
    if isinstance(value, float):
        value = round(value, 6)
    elif isinstance(value, list):
        value = [round(v, 6) if isinstance(v, float) else v for v in value]
    return {"value": value, "unit": unit, "source": source, "on": on}


def measured(value, unit, on):
    return fig(value, unit, "measured", on)


def counted(value, unit, on):
    return fig(value, unit, "counted", on)


def estimated(value, unit, on):
    return fig(value, unit, "estimated", on)


def parity_figures(block: dict, file: str) -> dict:
    """Wrap the raw numbers of a parity block into figures."""
    out = {
        k: v
        for k, v in block.items()
        if k
        not in ("test_split", "random_inputs", "calibration", "file_accuracy", "reference_accuracy")
    }
    units = {
        "max_abs_diff": "logit",
        "max_abs_diff_rel": "ratio",
        "sqnr_db": "dB",
        "top1_agreement": "fraction",
        "top1_agreement_all": "fraction",
    }
    for split in ("test_split", "random_inputs"):
        if split in block:
            n = block[split]["inputs"]
            on = f"{file} vs its PyTorch reference, {n} {split.replace('_', ' ')}"
            out[split] = {
                k: measured(v, units[k], on) for k, v in block[split].items() if k in units
            }
            if "near_ties" in block[split]:
                out[split] |= _ties(block[split], on)
    if "file_accuracy" in block:
        on = f"{file}, {block['test_split']['inputs']} test images"
        out["file_accuracy"] = measured(block["file_accuracy"], "top1", on)
        out["reference_accuracy"] = measured(
            block["reference_accuracy"], "top1", on.replace(file, f"PyTorch reference of {file}")
        )
    return out


def _ties(t: dict, on: str) -> dict:
    return {
        "output_step": counted(t["output_step"], "logit", f"grid of the reference outputs, {on}"),
        "near_ties": counted(
            t["near_ties"],
            "images",
            f"{on}: reference top-1 lead within 2 output steps, left out of top-1 agreement",
        ),
    }


def summary_table(report: dict) -> str:
    """A plain-text table for the terminal."""
    rows = [("stage / file", "accuracy", "MACs", "params", "bytes", "p50 ms", "parity")]
    for name, st in report["stages"].items():
        if "accuracy" not in st:
            continue
        rows.append(
            (
                name,
                _v(st.get("accuracy"), "{:.2%}"),
                _v(st.get("macs"), "{:,}"),
                _v(st.get("params"), "{:,}"),
                "",
                "",
                "",
            )
        )
    for name, b in report["backends"].items():
        if "error" in b:
            rows.append((f"{name}", "", "", "", "", "", "export failed"))
            continue
        ref = b["parity"].get("reference_accuracy")
        if ref and b["precision"] != "fp32":  # the quantized model, before the runtime
            rows.append(
                (f"{b['precision']} PyTorch reference", _v(ref, "{:.2%}"), "", "", "", "", "")
            )
        lat = (b.get("latency") or [{}])[0].get("p50")
        rows.append(
            (
                f"{b['file']} ({b['precision']})",
                _v(b["parity"].get("file_accuracy"), "{:.2%}"),
                "",
                "",
                _v(b.get("bytes"), "{:,}"),
                _v(lat, "{:.3f}"),
                b["parity"]["state"],
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _v(f, fmt):
    if not f:
        return ""
    return fmt.format(f["value"])
