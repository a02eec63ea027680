"""The stages' recorded info as report.json's figures: every number measured, estimated or
counted, with what it was measured on; settings the run was asked for sit under "settings".

Done here, when the report is built, and not in the stages: a stage's info in manifest.json
is its raw record, and a run directory written before a number got its source is reused as it
is (stage keys unchanged) and still reports that number with its source.

Two forms carry a source (pipeline/report.py): a figure ({"value", "unit", "source", "on"},
its value a number or an array), and one source on an enclosing object whose numbers are
arrays or tables (a reliability diagram: {..., "source", "unit", "on"}, no "value").
"""

from __future__ import annotations

from pipeline import confidence
from pipeline.report import counted, estimated, measured

# ---------------------------------------------------------------------------------------------
# stages: teacher, pruned, distilled, temperature


def stages(infos: dict, data, recipe) -> dict:
    return {name: _stage(info, data, recipe) for name, info in infos.items()}


def _stage(info: dict, data, recipe) -> dict:
    out = dict(info)  # never the manifest's own dict
    if "temperature_fitted" in info:
        out.update(_temperature(info, data))
    elif info.get("reliability_data") is not None:
        out["reliability_data"] = confidence.reliability_data(
            info["reliability_data"], info["accuracy"]["on"]
        )
    if "final_loss" in info:
        out["final_loss"] = measured(
            info["final_loss"],
            "nats per image (cross-entropy, plus the sparsity-training penalty when on)",
            f"teacher, training split ({len(data.y_train)} images), mean over the last of "
            f"{recipe.train.epochs} epochs",
        )
    if "ratio" in info:
        out["ratio"] = counted(
            info["ratio"], "fraction of prunable channels removed", "dense teacher -> pruned"
        )
    if "latency" in info:
        out["latency"] = _latency_target(info["latency"])
    if "widths" in info:
        out["widths"] = {
            side: {
                layer: counted(n, "output channels", f"{whose}: {layer}")
                for layer, n in info["widths"][side].items()
            }
            for side, whose in (("before", "dense teacher"), ("after", info["params"]["on"]))
        }
    return out


def _latency_target(lat: dict) -> dict:
    """prune.target latency: asked, predicted by the table, and after pruning measured on this
    host or, for a device profile, estimated by the device model."""
    t, fig = lat["table"], measured if lat.get("how", "measured") == "measured" else estimated
    on = f"{lat['measured_on']}" + (
        ", this host, whole exported program, p50" if fig is measured else ""
    )
    fit = f"latency table fitted on {t['configs']} uniform widths, error up to {t['fit_error_max']:.0%} on them"
    return {
        "dense": fig(lat["dense_ms"], "ms", f"dense teacher, {on}"),
        "target": fig(lat["target_ms"], "ms", f"the asked latency, {on}"),
        "predicted": estimated(lat["predicted_ms"], "ms", f"pruned widths, {fit}"),
        "achieved": fig(lat["achieved_ms"], "ms", f"pruned model, {on}"),
        "fixed_per_call": estimated(t["overhead_ms"], "ms", f"{fit}: time outside any operator"),
    } | _width_independent(t, fit)


def _width_independent(t: dict, fit: str) -> dict:
    """What no width can remove (absent from runs pruned before it was recorded)."""
    if t.get("width_independent_ms") is None:
        return {}
    why = "the per-call cost and the operators' parts that do not shrink with any channel width"
    return {"width_independent": estimated(t["width_independent_ms"], "ms", f"{fit}: {why}")}


def _temperature(info: dict, data) -> dict:
    n_val, n_test = len(data.y_val), len(data.y_test)
    fitted_on = f"distilled student, {n_val} validation images: the T minimising their NLL"
    rel = info["reliability_data"]
    return {
        "temperature_fitted": measured(info["temperature_fitted"], "T", fitted_on),
        "temperature_applied": measured(
            info["temperature_applied"],
            "T",
            f"distilled student: the T folded into the classifier ({info['decision']}); "
            f"T fitted on {n_val} validation images",
        ),
        "app_divides_logits_by": (
            measured(info["app_divides_logits_by"], "T", fitted_on + "; not folded, the app's step")
            if info.get("app_divides_logits_by") is not None
            else None
        ),
        "cross_validation": _cross_validation(info.get("cross_validation"), n_val),
        "reliability_data": confidence.reliability_data(
            rel,
            f"distilled student, {n_test} test images, before and after scaling by the T "
            f"fitted on {n_val} validation images (temperature: {rel['temperature']:.6g})",
        ),
    }


def _cross_validation(cv: dict | None, n_val: int) -> dict | None:
    if cv is None:
        return None
    on = (
        f"{cv['folds']}-fold cross-validation inside the {n_val} validation images: T fitted "
        "on the other folds, NLL on the held-out fold"
    )
    return {
        "settings": {"folds": cv["folds"]},
        "temperatures": measured(cv["temperatures"], "T, one per fold", on),
        "nll_scaled": measured(cv["nll_scaled"], "nats per image", f"{on}, scaled by that T"),
        "nll_unscaled": measured(cv["nll_unscaled"], "nats per image", f"{on}, unscaled"),
        "scaling_helps": cv["scaling_helps"],
    }


# ---------------------------------------------------------------------------------------------
# a backend's file: what export counted, what verify and profile measured

_PREFLIGHT_COUNTS = {  # key -> unit
    "delegated_subgraphs": "delegated subgraphs",
    "delegated_nodes": "nodes",
    "non_delegated_nodes": "nodes",
    "delegated_fraction": "fraction of the nodes delegated",
}
_PER_NAME_COUNTS = {  # {name: count} tables -> unit of each count
    "file_ops": "ops of this type in the file",
    "non_delegated_ops": "nodes of this op left off the delegate",
    "tensor_dtypes": "tensors of this dtype",
    "quantized_initializers": "initializers of this dtype",
}
_FORMAT_VERSIONS = ("specification_version", "opset", "ir_version")  # -> "versions"


def preflight(pre: dict, file: str) -> dict:
    """What export counted in the file (ops, delegation), timed (its steps) and measured
    (quantization error, weights against PyTorch's)."""
    on = f"{file}, counted at export"
    out = _counts(pre, on)
    if "timings" in pre:
        out["timings"] = {
            k: measured(v, "s", f"{file}: wall time of this export step on this host")
            for k, v in pre["timings"].items()
        }
    if "quantization_error" in pre:
        q = pre["quantization_error"]
        on_q = f"{file} vs the {q['vs']}, {q['inputs']}"
        out["quantization_error"] = {
            **q,
            "sqnr_db": measured(q["sqnr_db"], "dB", on_q),
            "top1_agreement": measured(q["top1_agreement"], "fraction", on_q),
        }
    if pre.get("weights_check"):
        out["weights_check"] = weights_check(pre["weights_check"], file)
    return out


def _counts(d: dict, on: str) -> dict:
    """Counted keys as figures, tables of counts as a figure per name, format versions under
    "versions"; other keys as they are."""
    out = {k: v for k, v in d.items() if k not in _FORMAT_VERSIONS}
    for k, unit in _PREFLIGHT_COUNTS.items():
        if k in d:
            out[k] = counted(d[k], unit, on)
    for k, unit in _PER_NAME_COUNTS.items():
        if k in d:
            out[k] = {name: counted(n, unit, on) for name, n in d[k].items()}
    if any(k in d for k in _FORMAT_VERSIONS):
        out["versions"] = {k: d[k] for k in _FORMAT_VERSIONS if k in d}
    return out


def weights_check(wc: dict, file: str) -> dict:
    """The file's weights against the PyTorch model's (batch norm folded): the bound is the
    check's tolerance; the differences are measured on the weights themselves."""
    on = f"{file}'s conv/linear weights vs the PyTorch model's, batch norm folded"
    rel = "max |file - torch| / max |torch|"
    out = {k: v for k, v in wc.items() if k != "bound"}
    out["tolerance"] = wc["bound"]
    out["checked"] = counted(wc["checked"], "weight tensors", on)
    for k in ("max_weight_rel_diff", "max_bias_rel_diff"):
        if wc.get(k) is not None:
            out[k] = measured(wc[k], rel, on)
    out["per_op"] = {op: _weights_row(row, rel, on) for op, row in wc["per_op"].items()}
    return out


def _weights_row(row: dict, rel: str, on: str) -> dict:
    out = dict(row)
    for k in ("weight_rel", "bias_rel"):
        if row.get(k) is not None:
            out[k] = measured(row[k], rel, f"{on}: {row['torch']}")
    if "palette_size" in row:
        out["palette_size"] = counted(row["palette_size"], "distinct weights", on)
    if "not_nearest" in row:
        out["not_nearest"] = counted(
            row["not_nearest"], "weights not their nearest palette entry", on
        )
    return out


def structural_parity(v: dict, file: str) -> dict:
    """A file that cannot run here: its structure counted, its weights checked."""
    out = dict(v)
    if v.get("structure"):
        out["structure"] = _counts(v["structure"], f"{file}, counted in the file")
        if "bytes" in v["structure"]:
            out["structure"]["bytes"] = counted(v["structure"]["bytes"], "bytes", file)
    if v.get("weights_check"):
        out["weights_check"] = weights_check(v["weights_check"], file)
    return out


def first_divergence(found: dict, file: str) -> dict:
    """The layer-by-layer search of a failed file: each tapped layer's SQNR against PyTorch."""
    on = f"{file}, re-lowered with every layer tapped, one test image, vs PyTorch"
    out = {k: v for k, v in found.items() if k != "threshold_db"}
    out["tolerance"] = {"min_sqnr_db": found["threshold_db"]}
    out["taps"] = counted(found["taps"], "tapped layers", on)
    if found.get("first"):
        out["first"] = {**found["first"], "sqnr_db": measured(found["first"]["sqnr_db"], "dB", on)}
    # one source for the table of layers (each row's sqnr_db)
    out["layers"] = {
        "rows": found["layers"],
        "source": "measured",
        "unit": "dB: each row's sqnr_db, its layer's output in the runtime vs PyTorch",
        "on": on,
    }
    return out


def calibration_images(calib: dict | None, file: str) -> dict | None:
    if calib is None:
        return None
    on = f"{file}: the int8 calibration draw from the {calib['split']} split"
    return {**calib, "count": counted(calib["count"], "images", on)}


def qat(q: dict | None) -> dict | None:
    """Quantization-aware training as the recipe asked for it."""
    if q is None:
        return None
    return {"settings": {k: q[k] for k in ("epochs", "lr")}, "data": q["data"]}


def latency(runs: list | None) -> list | None:
    """Threads and runs are what the recipe asked for: settings, beside the figures."""
    if runs is None:
        return None
    keys = ("threads", "runs")
    return [
        {"settings": {k: r[k] for k in keys}, **{k: v for k, v in r.items() if k not in keys}}
        for r in runs
    ]


def memory(m: dict | None) -> dict | None:
    if not m or "buffers" not in m:
        return m
    on = m["planned_bytes"]["on"]
    return {**m, "buffers": counted(m["buffers"], "non-empty buffers in the plan", on)}


def estimates(est: dict | None) -> dict | None:
    """Per device and thread count: how many layers the roofline puts on each side."""
    if not est or "error" in est:
        return est
    return {dev: _device_estimate(e) for dev, e in est.items()}


def _device_estimate(e: dict) -> dict:
    if not isinstance(e, dict) or "latency" not in e:
        return e
    per_t = {}
    for t, block in e["latency"].items():
        on = block["latency"]["on"]
        per_t[t] = {
            **block,
            **{
                f"{side}_bound_layers": estimated(
                    block[f"{side}_bound_layers"], "layers", f"{on}: layers {side}-bound"
                )
                for side in ("compute", "memory")
                if f"{side}_bound_layers" in block
            },
        }
    return {**e, "latency": per_t}


def op_breakdown(ob: dict | None) -> dict | None:
    """Per profiler event: how many times it was timed, and its share of the whole call."""
    if not ob or "rows" not in ob:
        return ob
    rows = []
    for r in ob["rows"]:
        on = r["p50"]["on"]
        row = {**r, "samples": counted(r["samples"], "timed events", on)}
        if r.get("share") is not None:
            row["share"] = measured(r["share"], "fraction of Method::execute's p50", on)
        rows.append(row)
    return {**ob, "rows": rows}


def host(h: dict) -> dict:
    return {**h, "cpus": counted(h["cpus"], "logical CPUs", "os.cpu_count() on this host")}
