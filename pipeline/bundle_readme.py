"""README.md for app engineers: how to feed each file in the bundle, in the app's language.

Each backend writes its own snippet (`Backend.app_snippet`, the text in targets/_snippets.py),
filled with this bundle's shapes and numbers.
"""

from __future__ import annotations

from pipeline.device_words import estimate_sentences
from targets import get_backend


def render(model_json: dict, report: dict | None = None) -> str:
    inp = model_json["inputs"][0]
    shape = inp["shape"]
    pre = model_json["preprocessing"]
    lines = [
        f"# {model_json['model']}: on-device bundle",
        "",
        f"Input `{inp['name']}`: float32 {shape} ({inp['layout']}). Output `logits`: float32 "
        f"{model_json['outputs'][0]['shape']}, classes {', '.join(model_json['labels'][:12])}"
        + ("…" if len(model_json["labels"]) > 12 else "")
        + ".",
        "",
        "## Preprocessing (raw data to model input)",
        "",
        f"Raw data: {pre['raw']}.",
        (
            f"`x = ((raw * {pre['scale']:.8g}) - mean[c]) / std[c]`, mean = {list(pre['mean'])}, "
            f"std = {list(pre['std'])}, then HWC to CHW."
        ),
        "",
        *_temperature_step(model_json.get("temperature")),
        (
            "`golden.npz` holds preprocessed inputs (`x`) and each file's outputs for them: run them "
            "in the app and compare, before anything else."
        ),
        "",
        "## Files",
        "",
        "| file | runtime | precision | parity on this host |",
        "|---|---|---|---|",
    ]
    for name, b in model_json["backends"].items():
        p = b["parity"]
        figures = ", ".join(f"{k} {v:.4g}" for k, v in p.items() if k != "state")
        lines.append(
            f"| `{b['file']}` | {name} | {b['precision']} | {p['state']}"
            + (f" ({figures})" if figures else "")
            + " |"
        )
    lines.append("")
    for name, b in model_json["backends"].items():
        lines += get_backend(name).app_snippet(b, shape)
    lines += _device_estimates(report)
    return "\n".join(lines) + "\n"


def _device_estimates(report: dict | None) -> list[str]:
    """The device estimates of report.json in words (as report.html says them)."""
    sentences = estimate_sentences(report or {})
    if not sentences:
        return []
    return [
        "",
        "## Estimated latency on phones",
        "",
        (
            "Estimated, not measured: a per-layer model of the device's cores and memory, checked "
            "against published on-device latencies (report.json has every figure and its source)."
        ),
        "",
        *[f"- {s}" for s in sentences],
    ]


def _temperature_step(t: dict | None) -> list[str]:
    """The calibration step the files could not carry, when there is one."""
    if not t or not t.get("app_divides_logits_by"):
        return []
    return [
        "## Postprocessing",
        "",
        (
            f"Divide the logits by T = {t['app_divides_logits_by']:.6g} before softmax: the "
            f"calibrated temperature could not be folded into the files ({t['decision']})."
        ),
        "",
    ]
