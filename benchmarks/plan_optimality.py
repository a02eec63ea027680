"""How close the latency planner comes to the best plan its own table allows (issue 27): for
each ResNet latency case, the planner's widths against the plan with the most MACs that the
latency table predicts within the same budget, found exactly.

    .venv/bin/python benchmarks/plan_optimality.py            # ResNet-20/56, int8 and fp32
    .venv/bin/python benchmarks/plan_optimality.py --quick    # small_cnn, one case

The planner is greedy (prune/widths.py: the step that saves the most time per MAC share it
removes, then blocks traded back). The best plan here is exhaustive: every combination of the
groups that couple with others (in a ResNet, the stage widths every block shares), and for each
a knapsack over the rest, solved exactly with Pareto fronts: given those widths, a residual
block and its inner width change only terms of their own, so each is one item of several
choices (removed, or kept at a width), and at most prune.min_width's share of blocks may go.
Both use the same table, floors and block limit, so the ratio goal's bound is the best plan's:
if its predicted speed-up ÷ MAC reduction is under 0.8, no plan of widths and removed blocks
reaches the goal on this host's table. Rows are written to --work as they finish; a re-run
resumes, and the latency tables are cached (shared with latency_target.py's --work).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

from _common import ROOT, cached_row, describe_env, environment, log, publish
from latency_target import PRECISIONS, TARGETS, _setup

HEADING = "## The latency planner against the best plan its table allows (issue 27)"
MODELS = ("resnet20", "resnet56")
ROW_FORMAT = 1


def case(model_name: str, size: int, precision: str, fraction: float, min_width: float) -> dict:
    from pipeline.prune.budget import tabled
    from pipeline.prune.sensitivity import mac_counts, mac_losses
    from pipeline.prune.widths import _analyse, _plan_widths

    model, x, _, cost = _setup(model_name, size, precision, "macs")
    ana = _analyse(model, x, (), 8, cost, None, min_width)
    dense = cost.measure(model, x)
    tabled(ana, model, x, cost, 8, 0, min_width, dense)
    ana.losses = mac_losses(model, x, ana)
    macs = mac_counts(model, x, ana)
    budget = fraction * dense
    t0 = time.perf_counter()
    planner = _plan_widths(ana, budget)
    plan_s, t0 = time.perf_counter() - t0, time.perf_counter()
    best = best_plan(ana, macs, budget)
    return {
        "model": model_name, "size": size, "precision": precision, "fraction": fraction,
        "min_width": min_width, "dense_ms": dense, "fit_error_max": cost.table["fit_error_max"],
        "planner": _summary(ana, macs, planner, dense), "best": _summary(ana, macs, best, dense),
        "planner_s": plan_s, "search_s": time.perf_counter() - t0,
    }  # fmt: skip


def _summary(ana, macs, kept: dict[int, int], dense: float) -> dict:
    from pipeline.prune.widths import predicted_cost

    return {
        "predicted": predicted_cost(ana, kept) / dense,
        "macs_kept": predicted_cost(macs, kept) / predicted_cost(macs, {}),
        "blocks_removed": sum(kept.get(b, 1) == 0 for b in ana.blocks),
        "widths": {ana.groups[gi].root: w for gi, w in kept.items()},
    }


def best_plan(ana, macs, budget: float) -> dict[int, int]:
    """The widths (group -> kept units) with the most MACs whose predicted time fits `budget`."""
    from pipeline.prune.widths import predicted_cost

    outer, items = _decomposed(ana, macs)
    best, best_mac = None, -1.0
    for combo in itertools.product(*[ana.groups[g].choices for g in outer]):
        base = dict(zip(outer, combo))
        lat0, mac0 = predicted_cost(ana, base), predicted_cost(macs, base)
        options = [_options(ana, macs, base, item, lat0, mac0) for item in items]
        for lat, mac, picks in _knapsack(options, budget - lat0, ana.max_blocks):
            if mac0 + mac > best_mac:
                best_mac = mac0 + mac
                best = {**base, **{g: w for o, i in zip(options, picks) for g, w in o[i][3]}}
    if best is None:
        raise ValueError(f"no plan within {budget:.4g} ms (below the table's floor)")
    # the decomposition assumed each item's terms are its own: the whole plan must agree
    assert abs(predicted_cost(macs, best) - best_mac) <= 1e-6 * predicted_cost(macs, {})
    return best


def _decomposed(ana, macs) -> tuple[list[int], list[tuple[int, ...]]]:
    """Outer groups (enumerated) and items (one block with the groups inside it, or one
    group): once the outer groups are fixed, no cost term holds two items."""
    free = {gi for gi, g in enumerate(ana.groups) if len(g.choices) > 1 and not g.block}
    terms = [gs for _, gs in ana.terms + macs.terms]
    outer: list[int] = []
    while True:  # the group in the most terms that still couple two free groups goes outer
        coupled = [gs for gs in terms if len((set(gs) & free) - set(outer)) > 1]
        if not coupled:
            break
        counts = [g for gs in coupled for g in (set(gs) & free) - set(outer)]
        outer.append(max(set(counts), key=counts.count))
    inner = free - set(outer)
    inside = {b: {g for gs in terms if b in gs for g in gs if g in inner} for b in ana.blocks}
    alone = inner - set().union(*inside.values())
    items = [(b, *sorted(inside[b])) for b in ana.blocks] + [(g,) for g in sorted(alone)]
    for gs in terms:
        if sum(bool(set(gs) & set(item)) for item in items) > 1:
            raise ValueError("the cost terms do not split into independent items")
    return outer, items


def _options(ana, macs, base, item, lat0: float, mac0: float) -> list[tuple]:
    """An item's choices as (ms added, MACs added, blocks removed, its widths) over `base`."""
    from pipeline.prune.widths import predicted_cost

    head = item[0]
    if ana.groups[head].block:
        kept = [{head: 1, **dict(zip(item[1:], ws))}
                for ws in itertools.product(*[ana.groups[g].choices for g in item[1:]])]  # fmt: skip
        plans = [({head: 0}, 1)] * (ana.max_blocks > 0) + [(k, 0) for k in kept]
    else:
        plans = [({head: w}, 0) for w in ana.groups[head].choices]
    return [
        (predicted_cost(ana, {**base, **p}) - lat0, predicted_cost(macs, {**base, **p}) - mac0,
         gone, tuple(p.items()))
        for p, gone in plans
    ]  # fmt: skip


def _knapsack(options: list[list[tuple]], room: float, max_gone: int) -> list[tuple]:
    """One choice per item with summed ms <= room and at most max_gone blocks removed: the
    Pareto front (ms, MACs, choice indices) per count removed, all counts together."""
    fronts = {0: [(0.0, 0.0, ())]}
    # a narrower choice saves time, so a partial plan over the room may still fit: it is
    # dropped only once the items left cannot save enough
    can_save = [
        sum(min(o[0] for o in opts) for opts in options[i + 1 :]) for i in range(len(options))
    ]
    for opts, later in zip(options, can_save):
        grown: dict[int, list] = {}
        for gone, front in fronts.items():
            for i, (ms, mac, g, _) in enumerate(opts):
                if gone + g <= max_gone:
                    grown.setdefault(gone + g, []).extend(
                        (a + ms, b + mac, picks + (i,)) for a, b, picks in front
                    )
        fronts = {k: _pareto(v, room - later) for k, v in grown.items()}
    return [p for front in fronts.values() for p in front]


def _pareto(plans: list[tuple], room: float) -> list[tuple]:
    """The plans that fit, less those another beats on both ms and MACs."""
    out, top = [], float("-inf")
    for p in sorted(plans, key=lambda p: (p[0], -p[1])):
        if p[0] <= room + 1e-12 and p[1] > top:
            out.append(p)
            top = p[1]
    return out


def _row_path(args: tuple, work: Path) -> Path:
    model, size, precision, fraction, min_width = args
    return work / "rows" / f"optimal-{model}-{size}-{precision}-{fraction:g}-w{min_width:g}-v{ROW_FORMAT}.json"  # fmt: skip


def cached_case(args: tuple, work: Path) -> dict:
    return cached_row(_row_path(args, work), lambda: case(*args))


def table_row(r: dict) -> str:
    p, b = r["planner"], r["best"]
    cells = [f"{s['predicted']:.3f} | {s['macs_kept']:.1%} | {s['blocks_removed']} | "
             f"{s['macs_kept'] / s['predicted']:.2f}" for s in (p, b)]  # fmt: skip
    return (
        f"| {r['model']} | {r['precision']} | {r['fraction']:g} ({r['min_width']:g}) | "
        f"{r['dense_ms']:.3f} | {r['fit_error_max']:.1%} | {cells[0]} | {cells[1]} | "
        f"{p['macs_kept'] / b['macs_kept']:.3f} | {r['planner_s']:.1f} s / {r['search_s']:.0f} s |"
    )


def section(rows: list[dict], quick: bool, env: tuple) -> str:
    smoke = " (--quick: a smoke run, not the result)" if quick else ""
    short = [r for r in rows if r["best"]["macs_kept"] / r["best"]["predicted"] < 0.8]
    share = [r["planner"]["macs_kept"] / r["best"]["macs_kept"] for r in rows]
    return "\n".join([
        HEADING, "",
        f"`benchmarks/plan_optimality.py`, on {describe_env(*env)}{smoke}.", "",
        ("Seeded models, ExecuTorch XNNPACK, 1 thread; the same latency table as the latency "
         "cases (measured per operator, fitted; its fit error on the measured widths in the "
         "table), the dense program measured, the budget the target fraction of it. Planner: "
         "prune/widths.py's greedy plan, steps weighed by MACs (the default). Best: the plan "
         "with the most MACs that the table predicts within the budget, exhaustive (every "
         "combination of the stage widths, the blocks and their inner widths an exact knapsack "
         "for each). Predicted / dense: the table's figure (estimated; the budget loop then "
         "measures the program and re-aims); MACs kept: counted; ratio: MACs kept ÷ predicted "
         "fraction, the speed-up ÷ MAC reduction the table promises (estimated)."), "",
        "| model | precision | target (min width) | dense ms | table fit error | planner: predicted / dense | MACs kept | blocks removed | ratio | best: predicted / dense | MACs kept | blocks removed | ratio | planner ÷ best MACs | planner / search time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[table_row(r) for r in rows], "",
        (f"The planner keeps {min(share):.3f} to {max(share):.3f} of the best plan's MACs "
         "(counted, at the table's predicted time). "
         "Cases whose best plan's ratio is under 0.8, where no plan of widths and removed "
         "blocks reaches the goal on this table: "
         + (", ".join(f"{r['model']} {r['precision']} at {r['fraction']:g}" for r in short)
            or "none") + "."),
    ])  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small_cnn at 8 px, one target")
    ap.add_argument("--models", help=f"comma-separated, from {', '.join(MODELS)}")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-latency-target")
    ap.add_argument("--out", type=Path, default=None, help="write the section here instead")
    args = ap.parse_args(argv)
    os.environ.setdefault("SLIMSHIP_LATENCY_CACHE", str(args.work / "tables"))
    names = args.models.split(",") if args.models else MODELS
    todo = (
        [("small_cnn", 8, "int8", 0.7, 0.25)]
        if args.quick
        else [(m, 32, p, f, w) for m in names for p in PRECISIONS for f, w in TARGETS]
    )
    start, rows = environment(), []
    for args_ in todo:
        rows.append(cached_case(args_, args.work))
        log(table_row(rows[-1]))
    publish(HEADING, section(rows, args.quick, (start, environment())), args.out, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
