"""``bench/online.py``'s results: each measure's median over its rounds, and the printed tables
of every measure and of the ratios the issue's goals are stated in (each ratio the median of
the per-round ratios, both sides measured a few seconds apart in the same round)."""

from __future__ import annotations

from typing import Any


def median_round(got: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds' median p50, p99 and max (each its own median), n summed."""
    import statistics

    out = dict(got[len(got) // 2])
    for key in ("p50_ms", "p99_ms", "max_ms", "mean_ms", "ops_per_s", "entities_per_s"):
        out[key] = statistics.median(g[key] for g in got)
    out["n"] = sum(g["n"] for g in got)
    return out


def round_ratio(r: dict[str, Any], a: str, b: str, key: str = "p99_ms") -> float:
    """Median over rounds of a/b (measured in the same round)."""
    import statistics

    pairs = zip(r["rounds"][a], r["rounds"][b], strict=True)
    return statistics.median(x[key] / y[key] for x, y in pairs)


def report(console: Any, r: dict[str, Any], args: Any) -> None:
    from rich.table import Table

    poll = r["guest_halt_poll_ns"]
    t = Table(title=f"online serving, {args.rows:,} events, 10 windowed features; "
                    f"guest_halt_poll_ns {'n/a' if poll is None else f'{poll:,}'}, "
                    f"online.spin_us {r['spin_us']}; read path {r['read path']}"
                    + ("" if r.get("cpu shared with redis") is None
                       else f"; this process and Redis on CPU {r['cpu shared with redis']}"))
    for col in ("measure", "n", "p50 ms", "p99 ms", "max ms", "calls/s"):
        t.add_column(col, justify="left" if col == "measure" else "right")
    for name, v in r.items():
        if isinstance(v, dict) and "p50_ms" in v:
            t.add_row(name, f"{v['n']:,}", f"{v['p50_ms']:.3f}", f"{v['p99_ms']:.3f}",
                      f"{v['max_ms']:.2f}", f"{v['ops_per_s']:,.0f}")
    console.print(t)
    bt = args.batch
    ratios = [
        ("materialize: tessera / feast (entity-rows/s)",
         r["materialize tessera"]["rows_per_s"] / r["materialize feast"]["rows_per_s"],
         "≥ 20×, and ≥ 100k rows/s"),
        ("materialize from the tiles: tessera / feast",
         r["materialize tessera (tiles)"]["rows_per_s"] / r["materialize feast"]["rows_per_s"],
         "(snapshots off)"),
        ("SDK 1x10 p50: tessera / raw HMGET",
         round_ratio(r, "tessera sdk 1x10", "raw HMGET 1x10", "p50_ms"), ""),
        ("SDK 1x10 p99: tessera / raw HMGET",
         round_ratio(r, "tessera sdk 1x10", "raw HMGET 1x10"), "≤ 1.5×"),
        ("SDK 1x10 p99: feast / tessera",
         round_ratio(r, "feast sdk 1x10", "tessera sdk 1x10"), "≥ 5×"),
        ("SDK 1x10 p99: feast / bare socket MGET",
         round_ratio(r, "feast sdk 1x10", "bare socket MGET, 20 µs gaps"),
         "the ceiling: the round trip alone"),
        ("SDK 1x10 p50: feast / tessera",
         round_ratio(r, "feast sdk 1x10", "tessera sdk 1x10", "p50_ms"), ""),
        ("SDK 1x10 p50: spin off / on",
         round_ratio(r, "tessera sdk 1x10, spin off", "tessera sdk 1x10", "p50_ms"),
         "online.spin_us 0 vs the default"),
        (f"SDK {bt}x10 p99: feast / tessera",
         round_ratio(r, f"feast sdk {bt}x10", f"tessera sdk {bt}x10"),
         "≥ 7× (and tessera p99 ≤ 3 ms)"),
        (f"SDK {bt}x10 p99: tessera / raw pipelined HMGET",
         round_ratio(r, f"tessera sdk {bt}x10", f"raw pipelined HMGET {bt}x10"), ""),
    ]
    if "tessera sdk 1x10, unix" in r:
        ratios += [
            ("unix socket, SDK 1x10 p99: tessera / raw HMGET",
             round_ratio(r, "tessera sdk 1x10, unix", "raw HMGET 1x10, unix"), "≤ 1.5×"),
            ("unix socket, SDK 1x10 p99: feast / tessera",
             round_ratio(r, "feast sdk 1x10, unix", "tessera sdk 1x10, unix"), "≥ 5×"),
            ("unix socket, SDK 1x10 p50: feast / tessera",
             round_ratio(r, "feast sdk 1x10, unix", "tessera sdk 1x10, unix", "p50_ms"), ""),
            ("SDK 1x10 p99: tessera tcp / unix",
             round_ratio(r, "tessera sdk 1x10", "tessera sdk 1x10, unix"), ""),
            ("SDK 1x10 p99: feast tcp / unix",
             round_ratio(r, "feast sdk 1x10", "feast sdk 1x10, unix"), ""),
        ]
    if "tessera http 1x10" in r:
        conc = args.concurrency
        h = {name: r[name] for name in r if name.startswith(("tessera http", "feast http"))}
        ratios += [
            ("HTTP 1x10 p99: feast / tessera",
             h["feast http 1x10"]["p99_ms"] / h["tessera http 1x10"]["p99_ms"], "≥ 4×"),
            ("HTTP 1x10 p50: feast / tessera",
             h["feast http 1x10"]["p50_ms"] / h["tessera http 1x10"]["p50_ms"], ""),
            (f"HTTP 1x10 x{conc} requests/s: tessera / feast",
             h[f"tessera http 1x10 x{conc}"]["ops_per_s"]
             / h[f"feast http 1x10 x{conc}"]["ops_per_s"], "higher is better"),
            (f"HTTP 1x10 x{conc} p99: feast / tessera",
             h[f"feast http 1x10 x{conc}"]["p99_ms"] / h[f"tessera http 1x10 x{conc}"]["p99_ms"],
             "≥ 4×"),
        ]
    g = Table(title="ratios (the issue's goals)")
    for col in ("ratio", "value", "goal"):
        g.add_column(col)
    for name, value, goal in ratios:
        g.add_row(name, f"{value:.2f}×", goal)
    console.print(g)
    console.print(f"tessera materialize {r['materialize tessera']['rows_per_s']:,.0f} "
                  f"entity-rows/s (from the tiles "
                  f"{r['materialize tessera (tiles)']['rows_per_s']:,.0f}); feast "
                  f"{r['materialize feast']['rows_per_s']:,.0f}")
    r["ratios"] = {name: value for name, value, _ in ratios}


