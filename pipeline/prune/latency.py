"""Latency as the pruning target: a per-layer latency table measured through the target's
runtime, written as cost terms the width planner reads, and the whole program measured after.

The table. The model is pruned to a few uniform widths (every group at the allowed width
nearest to FRACTIONS of its own), each copy exported through the backend at the real input
size, precision and threads, and run with the runtime's own per-operator profiler (ExecuTorch:
ETDump, one event per XNNPACK operator). The convolution and fully-connected events line up
with the model's conv/linear layers in execution order; every other event (add, clamp, pool,
transpose) moves the tensor the layer before it wrote, so it belongs to that layer's output
group. Each event is fitted as a + b * (product of the keep-fractions of its groups): MACs of
a conv scale with in x out width, a depthwise conv's and an add's with one width. What no
event covers (the call into the runtime, the delegate's own work) is the measured whole-program
time less the events' sum: a constant. The fit's error on the measured configurations is kept.

The table is cached by a content key (layer shapes, widths, backend and its version, precision,
threads, CPU) and reused across runs. After the planner picks widths, the pruned program is
exported and measured again, interleaved with the dense program (loaded once, at its first
measurement) and scaled by it, so that a shared machine's drift cancels; the budget loop
re-aims on that measurement (pipeline/prune/budget.py), so what the report calls achieved is
measured, never the table's prediction.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import random
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ground.errors import UsageError
from ground.log import log
from pipeline.estimate.hostfit import this_cpu
from pipeline.prune.blocks import inside
from pipeline.rundir import library_versions

FRACTIONS = (1.0, 0.75, 0.5, 0.25)
LAYER_EVENTS = ("Convolution", "Fully Connected", "Deconvolution")
CACHE_ENV = "SLIMSHIP_LATENCY_CACHE"
# independent loads pooled per program: one loaded instance of a program timed up to 5 % from
# another (ResNet-56 int8 pruned to half: 0.42-0.47 of dense across pairs of loads, measured)
LOADS = 3
HOW = "measured per operator (runtime profiler) at uniform widths; fitted per event"


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "slimship" / "latency"
    return Path(os.environ.get(CACHE_ENV) or default).expanduser()


@dataclass
class LatencyCost:
    """What a latency target is measured on: one backend at one precision and thread count."""

    backend: object  # a backend with operator_times (targets/)
    precision: str
    calibration: np.ndarray  # int8 calibration images, from the training split
    threads: int = 1
    runs: int = 50
    name: str = "latency"
    how: str = "measured"  # on this host; a device profile's cost is estimated
    depth: bool = True  # the planner may remove residual blocks whole (prune/blocks.py)
    weighing: str = "macs"  # a step's cost to the model (prune/sensitivity.py)
    table: dict | None = None  # the fitted table of the last analysis (for the report)
    _memo: dict = field(default_factory=dict, repr=False)
    _reference: tuple | None = field(default=None, repr=False)  # (program path, first p50 ms)

    def __str__(self) -> str:
        return f"latency on {self.backend.name} {self.precision}, {self.threads} thread(s)"

    def measure(self, model: nn.Module, example: torch.Tensor) -> float:
        """p50 ms of the whole exported program (memoized by the model's weights). The first
        program measured (the dense model) is the reference: every later one is timed
        interleaved with it and scaled by the reference's first time over its time now, so
        that a shared machine speeding up or slowing down between the two does not move the
        figure. Each program is loaded LOADS times afresh and its figure is the median of
        the loads' medians: a single load's timing depends on where its buffers land."""
        return float(np.mean(self._looks(model, example)))

    def confirmed(self, model: nn.Module, example: torch.Tensor) -> float:
        """measure() with one more independent measurement in the mean. The budget loop keeps
        an attempt that measured under the budget, so it favours those that measured low by
        chance (a 0.1 ms program measures within about ±8 %); a second look halves that."""
        looks = self._looks(model, example)
        looks.append(self._program_ms(model, example))
        return float(np.mean(looks))

    def _looks(self, model: nn.Module, example: torch.Tensor) -> list[float]:
        """The program's measurements so far (memoized by its weights), at least one."""
        key = _weights_digest(model)
        if key not in self._memo:
            self._memo[key] = [self._program_ms(model, example)]
        return self._memo[key]

    def _program_ms(self, model: nn.Module, example: torch.Tensor) -> float:
        x = example.numpy()
        if self._reference is None:
            folder = Path(tempfile.mkdtemp(prefix="slimship-latency-"))
            weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)
            path = self._export(model, example, folder)
            ms = self._pooled({"ref": path}, x)["ref"]
            self._reference = (path, ms)
            return ms
        path, first = self._reference
        with tempfile.TemporaryDirectory() as tmp:
            t = self._pooled({"ref": path, "this": self._export(model, example, Path(tmp))}, x)
        return t["this"] * first / t["ref"]

    def _pooled(self, paths: dict[str, Path], x: np.ndarray) -> dict[str, float]:
        """Per program, the median over LOADS fresh loads of each load's median ms, all
        interleaved."""
        runners = {
            (k, i): self.backend.load(p, self.threads)
            for k, p in paths.items()
            for i in range(LOADS)
        }
        t = _timed_calls(runners, x, self.runs)
        return {k: float(np.median([t[(k, i)] for i in range(LOADS)])) for k in paths}

    def _export(self, model: nn.Module, example: torch.Tensor, folder: Path) -> Path:
        from targets._base import ExportRequest

        req = ExportRequest(
            copy.deepcopy(model).eval(), example, self.precision, self.calibration, folder
        )
        return self.backend.export(req).path

    def _timed(self, model: nn.Module, example: torch.Tensor) -> dict:
        """Every operator's p50 ms (the runtime's profiler) and the whole call's, unprofiled."""
        x = example.numpy()
        with tempfile.TemporaryDirectory() as tmp:
            path = self._export(model, example, Path(tmp))
            ops = self.backend.operator_times(path, x, self.threads, self.runs)
            return {"ops": ops, "total_ms": self._pooled({"it": path}, x)["it"]}

    def fitted(self, model, example, ana, prune_copy, now_ms: float) -> tuple[list, float]:
        """Cost terms and constant (ms) for the planner, from the cached or measured table,
        scaled to `now_ms`, the model's whole program measured now."""
        configs = _uniform_configs(ana)
        key = self._key(model, example, configs, [ana.groups[gi].root for gi in ana.blocks])
        path = cache_dir() / f"{key[:24]}.json"
        if path.is_file():
            table = json.loads(path.read_text())
            log(f"[prune] latency table reused from {path} (same layers, runtime, CPU, threads)")
        else:
            table = self._build(model, example, ana, configs, prune_copy)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(table, indent=1))
            os.replace(tmp, path)
            log(f"[prune] latency table written to {path}")
        self.table = scaled(table, now_ms)
        return planner_terms(self.table, ana)

    def _key(self, model, example, configs, blocks) -> str:
        shapes = [(n, tuple(p.shape)) for n, p in model.state_dict().items()]
        parts = {
            "format": 3,  # events name their layer; the overhead split per call / per operator
            "shapes": shapes,
            "example": list(example.shape),
            "configs": configs,
            "blocks": blocks,
            "backend": self.backend.name,
            "versions": library_versions(),
            "precision": self.precision,
            "threads": self.threads,
            "cpu": [platform.machine(), this_cpu()],
        }
        return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()

    def _build(self, model, example, ana, configs, prune_copy) -> dict:
        log(
            f"[prune] building the latency table: {len(configs)} widths through "
            f"{self.backend.name} {self.precision}, {self.threads} thread(s)"
        )
        rows = []
        for kept in configs:
            pruned = prune_copy(model, example, ana, {int(k): v for k, v in kept.items()})
            timed = self._timed(pruned, example)
            frac = {int(g): k / ana.groups[int(g)].size for g, k in kept.items()}
            rows.append((timed, _features(_layer_order(pruned, example), timed, ana, frac)))
        table = _fit(rows, str(self))
        if not ana.blocks:
            return table
        gone = dict.fromkeys(ana.blocks, 0)
        return _split_overhead(table, self._timed(prune_copy(model, example, ana, gone), example))


def _split_overhead(table: dict, depth: dict) -> dict:
    """The time outside the profiler's events is not all per call: the runtime spends some on
    every operator it dispatches, and a removed block takes that with it. Counted as a
    constant, it made the table predict ResNet-20 int8 with 6 of 7 blocks removed at 0.134 ms
    where it measured 0.072. `depth` is the program with every residual block removed at full
    width (timed like a row): its time outside events against the full program's splits the
    overhead into per call + per operator x operators (both non-negative)."""
    n_full, n_depth = len(table["events"]), len(depth["ops"])
    rest_full = table["overhead_ms"]
    rest_depth = depth["total_ms"] - sum(ms for _, ms in depth["ops"])
    per_op = (rest_full - rest_depth) / (n_full - n_depth) if n_full > n_depth else 0.0
    per_op = min(max(0.0, per_op), rest_full / n_full)
    return {**table, "overhead_ms": rest_full - per_op * n_full, "per_operator_ms": per_op}


def fixed_ms(table: dict, event: dict) -> float:
    """An event's width-independent ms: its fitted fixed part and the runtime's per-operator
    share of the overhead."""
    return event["fixed"] + table.get("per_operator_ms", 0.0)


def planner_terms(table: dict, ana=None) -> tuple[list, float]:
    """A fitted table as the planner's cost terms (ms, groups whose kept fractions scale it)
    and constant ms. With the analysis, an event of a layer inside a residual block also
    scales with that block's group (0 once removed), its fixed part too."""
    blocks = [(gi, ana.groups[gi].root) for gi in ana.blocks] if ana else []
    terms, const = [], table["overhead_ms"]
    for e in table["events"]:
        holds = tuple(gi for gi, root in blocks if inside(e.get("layer"), root))
        terms.append((e["per_width"], tuple(e["groups"]) + holds))
        if holds:
            terms.append((fixed_ms(table, e), holds))
        else:
            const += fixed_ms(table, e)
    return terms, const


def scaled(table: dict, now_ms: float) -> dict:
    """The table in the units of the model's time now. A table measured at another time, on a
    quieter or busier machine, keeps its shape; unscaled, its floor was compared with a budget
    from today's dense time and refused a reachable target (ResNet-20 int8 at 0.5: a table
    from 0.255 ms against a dense program measured at 0.21 ms)."""
    terms, const = planner_terms(table)
    s = now_ms / (const + sum(w for w, _ in terms))  # the table's own dense prediction
    if abs(s - 1) > 0.02:
        log(f"[prune] latency table scaled by {s:.3f} to the program's {now_ms:.3g} ms now")
    events = [
        {**e, "fixed": e["fixed"] * s, "per_width": e["per_width"] * s} for e in table["events"]
    ]
    ms = {k: table[k] * s for k in ("overhead_ms", "dense_ms", "per_operator_ms") if k in table}
    return {**table, "events": events, **ms}


def _timed_calls(runners: dict, x: np.ndarray, runs: int) -> dict[str, float]:
    """Median ms of each runner, called in turn: at least `runs` rounds and half a second,
    each round in a new order (no runner always runs in the cache state another leaves)."""
    for run in runners.values():
        for _ in range(3):
            run(x)
    times = {k: [] for k in runners}
    order, rng = list(runners), random.Random(0)
    start = time.perf_counter()
    while len(times[order[0]]) < runs or time.perf_counter() - start < 0.5:
        rng.shuffle(order)
        for k in order:
            t0 = time.perf_counter()
            runners[k](x)
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def _uniform_configs(ana) -> list[dict]:
    """Every group at the allowed width nearest to f of its own, for f in FRACTIONS."""
    configs = []
    for f in FRACTIONS:
        kept = {
            str(gi): min(g.choices, key=lambda c, g=g: abs(c - f * g.size))
            for gi, g in enumerate(ana.groups)
            if not g.block  # blocks stay: the table times the layers they hold
        }
        if kept not in configs:
            configs.append(kept)
    return configs


def _layer_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Conv/linear modules in the order a forward pass calls them."""
    order, hooks = [], []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
            hooks.append(m.register_forward_hook(lambda *_, n=name: order.append(n)))
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    return order


def _features(layers: list[str], timed: dict, ana, frac: dict[int, float]) -> list[dict]:
    """The runtime's events, each conv/linear one named by the layer it runs (call order)."""
    events = timed["ops"]
    layer_events = [e for e in events if e[0].startswith(LAYER_EVENTS)]
    if len(layer_events) != len(layers):
        raise UsageError(
            f"prune: latency table: the runtime timed {len(layer_events)} convolution/linear "
            f"operators, the model calls {len(layers)} conv/linear layers; they cannot be "
            "lined up (prune.target macs avoids the table)"
        )
    it = iter(layers)
    named = [(n, ms, next(it) if n.startswith(LAYER_EVENTS) else None) for n, ms in events]
    return grouped(named, ana, frac)


def grouped(events: list[tuple], ana, frac: dict[int, float]) -> list[dict]:
    """Each (event, ms, conv/linear layer or None) with the groups whose widths scale it and
    the product of their fractions; an event of no layer moves the tensor the last one wrote."""
    out, layer = [], None
    for name, ms, runs in events:
        if runs is not None:
            layer = runs
            mine = tuple(ana.member.get(layer, ()))
        else:
            mine = (ana.out_of[layer],) if layer in ana.out_of else ()
        x = float(np.prod([frac[g] for g in mine])) if mine else 1.0
        event = name.rsplit(" #", 1)[0]
        out.append({"event": event, "ms": ms, "groups": list(mine), "x": x, "layer": layer})
    return out


def _fit(rows: list[tuple[dict, list[dict]]], on: str, how: str = HOW) -> dict:
    """Per event: ms = fixed + per_width * x, least squares over the configurations."""
    n_events = len(rows[0][1])
    if any(len(r[1]) != n_events for r in rows):
        raise UsageError(
            "prune: latency table: the programs at different widths ran different operators"
        )
    events, predicted = [], np.zeros(len(rows))
    for i in range(n_events):
        x = np.array([r[1][i]["x"] for r in rows])
        t = np.array([r[1][i]["ms"] for r in rows])
        fixed, per = _line(x, t)
        predicted += fixed + per * x
        first = rows[0][1][i]
        events.append(
            {
                **{k: first[k] for k in ("event", "groups", "layer")},
                "fixed": fixed,
                "per_width": per,
            }
        )
    totals = np.array([r[0]["total_ms"] for r in rows])
    overhead = float(max(0.0, np.mean(totals - predicted)))
    err = (predicted + overhead - totals) / totals
    return {
        "on": on,
        "events": events,
        "overhead_ms": overhead,
        "configs": len(rows),
        "dense_ms": float(totals[0]),
        "fit_error_max": float(np.abs(err).max()),
        "how": how,
    }


def _line(x: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """Least-squares fixed + per * x with both parts non-negative."""
    if np.ptp(x) < 1e-9:
        return float(t.mean()), 0.0
    per, fixed = np.polyfit(x, t, 1)
    if per < 0:
        return float(t.mean()), 0.0
    if fixed < 0:
        return 0.0, float((x @ t) / (x @ x))
    return float(fixed), float(per)


def _weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for n, v in model.state_dict().items():
        h.update(n.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()
