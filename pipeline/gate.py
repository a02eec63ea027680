"""Budgets as an exit code: every line of a budgets file is checked against report.json.

    target: android                 # optional: the report's target must match
    max_regression_percent: 10      # with a baseline report: a figure worse by more fails
    budgets:
      - backend: NAME               # a backend of the report (cli.py targets), or "*" for all
        max_file_bytes: 4000000
        max_latency_ms: 15          # latency_on: host (measured) or a device profile (estimated)
        latency_stat: p50           # p50 or p90
        max_accuracy_drop_points: 1.0   # against the teacher, in percentage points
        min_top1_agreement: 0.99    # parity against the file's PyTorch reference
        min_sqnr_db: 25
        min_delegated_fraction: 0.95
        max_peak_rss_bytes: 200000000

Exit 0 when every line holds, 1 when any is broken (or has no figure to check), 2 for a
malformed budgets file or report.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, fields
from pathlib import Path

from ground.errors import UsageError, short
from pipeline.config import from_dict
from pipeline.report import counted
from pipeline.yamlfile import read_yaml_file


@dataclass(frozen=True)
class Budget:
    backend: str = "*"
    max_file_bytes: int | None = None
    max_latency_ms: float | None = None
    latency_stat: str = "p50"
    latency_on: str = "host"
    max_peak_rss_bytes: int | None = None
    max_accuracy_drop_points: float | None = None
    min_top1_agreement: float | None = None
    min_sqnr_db: float | None = None
    min_delegated_fraction: float | None = None
    max_ece: float | None = None


@dataclass(frozen=True)
class Budgets:
    budgets: tuple[Budget, ...] = ()
    target: str | None = None
    max_regression_percent: float | None = None


LIMITS = [f.name for f in fields(Budget) if f.name.startswith(("max_", "min_"))]


def load_budgets(path: str | Path) -> Budgets:
    data = read_yaml_file(path, "--budget")
    b = from_dict(Budgets, data if data is not None else {}, "", "budget")
    if not b.budgets:
        raise UsageError(f"--budget {path}: budget key budgets must list at least one budget")
    for i, line in enumerate(b.budgets):
        if not re.fullmatch(r"\*|[A-Za-z0-9][A-Za-z0-9._-]*", line.backend):
            raise UsageError(
                f"budget key budgets[{i}].backend must be a backend name (cli.py targets) or "
                f'"*", got {short(line.backend)!r}'
            )
        if line.latency_stat not in ("p50", "p90"):
            raise UsageError(
                f"budget key budgets[{i}].latency_stat must be p50 or p90, "
                f"got {line.latency_stat!r}"
            )
        if not any(getattr(line, k) is not None for k in LIMITS):
            raise UsageError(f"budget key budgets[{i}] sets no limit; one of: {', '.join(LIMITS)}")
    return b


def load_report(path: str | Path) -> dict:
    """A report.json, or a bundle folder's; a report inside a bundle is checked against the
    bundle's manifest.json first (a tampered file is refused, naming it)."""
    from pipeline.bundle import is_bundle, verify

    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    if is_bundle(p.parent):
        verify(p.parent)
    try:
        report = json.loads(p.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such report") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not a slimship report.json ({e})") from None
    if not isinstance(report, dict) or "backends" not in report or "stages" not in report:
        raise UsageError(f"{path}: not a slimship report.json (no backends/stages)")
    return report


def figure(report: dict, backend: str, limit: str, line: Budget):
    """(value, unit, source, on) of the figure a limit checks; value None when the report has
    none."""
    b = report["backends"].get(backend, {})
    par = b.get("parity", {}).get("test_split", {})

    def f(fig):
        return (fig["value"], fig["unit"], fig["source"], fig["on"]) if fig else (None,) * 4

    if limit == "max_file_bytes":
        return f(b.get("bytes"))
    if limit == "max_latency_ms":
        if line.latency_on == "host":
            lat = (b.get("latency") or [{}])[0]
            return f(lat.get(line.latency_stat))
        est = (b.get("estimates") or {}).get(line.latency_on, {})
        return f(((est.get("latency") or {}).get("1") or {}).get("latency"))
    if limit == "max_peak_rss_bytes":
        return f((b.get("memory") or {}).get("peak_rss"))
    if limit == "max_accuracy_drop_points":
        acc, teacher = (
            b.get("parity", {}).get("file_accuracy"),
            report["stages"]["teacher"]["accuracy"],
        )
        if not acc:
            return (None,) * 4
        return (
            round(100 * (teacher["value"] - acc["value"]), 4),
            "percentage points of top1",
            "measured",
            f"teacher ({teacher['on']}) minus {acc['on']}",
        )
    if limit == "min_top1_agreement":
        return f(par.get("top1_agreement"))
    if limit == "min_sqnr_db":
        return f(par.get("sqnr_db"))
    if limit == "min_delegated_fraction":
        frac = b.get("preflight", {}).get("delegated_fraction")
        if isinstance(frac, (int, float)):  # a baseline written before it had its source
            frac = counted(frac, "fraction of the nodes delegated", f"{backend} preflight")
        return f(frac)
    if limit == "max_ece":
        return f((b.get("calibration_metrics") or {}).get("ece"))
    raise KeyError(limit)


def evaluate(report: dict, budgets: Budgets, baseline: dict | None = None) -> list[dict]:
    lines = []
    if budgets.target and budgets.target != report.get("target"):
        raise UsageError(
            f"budget key target is {budgets.target!r} but the report is for "
            f"{report.get('target')!r}"
        )
    for i, line in enumerate(budgets.budgets):
        names = sorted(report["backends"]) if line.backend == "*" else [line.backend]
        for backend in names:
            for limit in LIMITS:
                bound = getattr(line, limit)
                if bound is None:
                    continue
                lines.append(
                    _check(
                        report,
                        backend,
                        limit,
                        line,
                        bound,
                        baseline,
                        budgets.max_regression_percent,
                        i,
                    )
                )
    if not lines:
        raise UsageError(
            "nothing to check: no budget line matches a backend of the report "
            f"(its backends: {', '.join(sorted(report['backends'])) or 'none'})"
        )
    return lines


def _check(report, backend, limit, line, bound, baseline, max_reg, i) -> dict:
    value, unit, source, on = figure(report, backend, limit, line)
    name = f"budgets[{i}] {backend} {limit}" + (
        f" ({line.latency_stat} on {line.latency_on})" if limit == "max_latency_ms" else ""
    )
    out = {
        "name": name,
        "backend": backend,
        "limit_key": limit,
        "limit": bound,
        "value": value,
        "unit": unit,
        "source": source,
        "on": on,
    }
    if value is None:
        out.update(verdict="fail", why=f"the report has no figure for {limit} of {backend}")
        return out
    ok = value <= bound if limit.startswith("max_") else value >= bound
    out.update(
        verdict="pass" if ok else "fail",
        why="" if ok else f"{value:g} {'>' if limit.startswith('max_') else '<'} {bound:g}",
    )
    if baseline is not None and backend in baseline.get("backends", {}):
        old = figure(baseline, backend, limit, line)[0]
        if old not in (None, 0):
            delta = 100.0 * (value - old) / abs(old)
            out["baseline"], out["delta_percent"] = old, round(delta, 2)
            worse = delta if limit.startswith("max_") else -delta
            if max_reg is not None and worse > max_reg:
                out["verdict"] = "fail"
                out["why"] = (
                    out["why"] + "; " if out["why"] else ""
                ) + f"regressed {worse:.1f}% against the baseline (allowed {max_reg:g}%)"
    return out


def table(lines: list[dict]) -> str:
    rows = [("budget line", "value", "limit", "delta", "verdict")]
    for ln in lines:
        rows.append(
            (
                ln["name"],
                "-" if ln["value"] is None else f"{ln['value']:g}",
                f"{ln['limit']:g}",
                f"{ln['delta_percent']:+.1f}%" if "delta_percent" in ln else "",
                ln["verdict"].upper() + (f" ({ln['why']})" if ln["why"] else ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    text = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text)


def junit_xml(lines: list[dict]) -> bytes:
    fails = sum(ln["verdict"] == "fail" for ln in lines)
    suite = ET.Element(
        "testsuite", name="slimship budgets", tests=str(len(lines)), failures=str(fails), errors="0"
    )
    for ln in lines:
        case = ET.SubElement(
            suite, "testcase", classname=f"budget.{ln['backend']}", name=ln["name"]
        )
        if ln["verdict"] == "fail":
            fail = ET.SubElement(case, "failure", message=ln["why"])
            fail.text = f"value {ln['value']} ({ln['source']}, {ln['on']}), limit {ln['limit']}"
    return ET.tostring(suite, encoding="utf-8", xml_declaration=True)
