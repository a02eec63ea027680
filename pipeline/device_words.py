"""Device estimates in words: the sentences report.html and the bundle's README.md both show,
so that the two say the same as report.json (value, range, validated error or `unvalidated`)."""

from __future__ import annotations


def estimate_sentences(report: dict) -> list[str]:
    """One sentence per file, device and thread count estimated in the report."""
    out = []
    for b in report.get("backends", {}).values():
        for dev, est in (b.get("estimates") or {}).items():
            if not isinstance(est, dict) or "latency" not in est:
                continue
            for t, block in est["latency"].items():
                out.append(sentence(b["file"], dev, t, block, est.get("validation") or {}))
    return out


def sentence(file: str, dev: str, threads: str, block: dict, val: dict) -> str:
    lat = block["latency"]["value"]
    rng = (block.get("range") or {}).get("value")
    s = f"{file} on {dev}, {threads} thread(s) ({block.get('cores', '')}): about {lat:g} ms"
    if rng:
        s += f", likely {rng[0]:g} to {rng[1]:g} ms"
    return s + "; " + _validation_words(dev, val)


def _validation_words(dev: str, val: dict) -> str:
    if "rows" not in val:
        return "unvalidated: no published latencies to compare with."
    n, med = val["rows"]["value"], val["median_abs_error"]["value"]
    p10, p90 = val["p10_error"]["value"], val["p90_error"]["value"]
    spread = f"median error {med:.0%}, from {p10:+.0%} to {p90:+.0%} (p10 to p90)"
    if val["state"] == "validated":
        return f"validated against {n} published latencies of this device, held out: {spread}."
    words = (
        f"unvalidated: no published latencies for {dev}. The nearest validated device, "
        f"{val['rests_on']}, has {spread} over {n} published latencies, held out."
    )
    nd = val.get("new_device")
    if nd:
        words += (
            " Devices estimated without their own rows were within 25 % in "
            f"{nd['within_25pct']['value']:.0%} of cases (median error "
            f"{nd['median_abs_error']['value']:.0%}); the range above applies that spread."
        )
    return words
