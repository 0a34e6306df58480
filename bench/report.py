"""The report of `python -m bench.run`: the workers chart, the Markdown tables for docs/benchmarks.md, and the
commit measured."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from sandbox.stack import ROOT


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    styles = {"direct": "-", "nginx": "--"}
    for endpoint, color in (("config", "tab:blue"), ("login", "tab:orange")):
        for target, style in styles.items():
            sel = sorted((r for r in rows if r["endpoint"] == endpoint and r["target"] == target), key=_workers)
            xs = [r["workers"] for r in sel]
            axes[0].plot(xs, [r["rps"] for r in sel], style, color=color, marker="o", label=f"{endpoint} {target}")
            ax = axes[1] if endpoint == "config" else axes[2]
            ax.plot(xs, [r["p50_ms"] for r in sel], style, color="tab:green", marker="o", label=f"p50 {target}")
            ax.plot(xs, [r["p99_ms"] for r in sel], style, color="tab:red", marker="^", label=f"p99 {target}")
    axes[0].set_title("throughput")
    axes[0].set_ylabel("requests/s")
    axes[1].set_title("GET /channel/config latency")
    axes[2].set_title("POST /channel/login latency")
    for ax in axes[1:]:
        ax.set_ylabel("ms")
    for ax in axes:
        ax.set_xlabel("gunicorn workers")
        ax.set_xticks(sorted({r["workers"] for r in rows}))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"gateway behind nginx vs direct to gunicorn ({os.cpu_count()} CPUs, load generator on the same host)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _workers(row: dict[str, Any]) -> int:
    return int(row["workers"])


def markdown(results: dict[str, Any]) -> str:
    out = []
    if results.get("workers"):
        out += [
            "| workers | endpoint | path | req/s | p50 ms | p99 ms | errors |",
            "|---:|---|---|---:|---:|---:|---:|",
        ]
        for r in sorted(results["workers"], key=lambda r: (r["endpoint"], r["workers"], r["target"])):
            out.append(
                f"| {r['workers']} | {r['endpoint']} | {r['target']} | {r['rps']:.0f} | {r['p50_ms']:.1f} "
                f"| {r['p99_ms']:.1f} | {r['errors']} |"
            )
        out.append("")
    if results.get("ratio"):
        ratio = results["ratio"]
        out += [
            "| round | /channel/config req/s | /bare req/s | throughput ratio "
            "| server CPU ms/req config | server CPU ms/req bare | CPU ratio |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for i, r in enumerate(ratio["rounds"], 1):
            g, b = r["gateway"], r["bare"]
            out.append(
                f"| {i} | {g['rps']:.0f} | {b['rps']:.0f} | {r['ratio']:.3f} | {g['server_cpu_ms_per_request']:.3f} "
                f"| {b['server_cpu_ms_per_request']:.3f} | {r['cpu_ratio']:.3f} |"
            )
        out.append(
            f"| mean / median | {ratio['gateway_rps']:.0f} | {ratio['bare_rps']:.0f} | **{ratio['ratio']:.3f}** "
            f"(median {ratio['median_round_ratio']:.3f}) | {ratio['gateway_cpu_ms']:.3f} | {ratio['bare_cpu_ms']:.3f} "
            f"| **{ratio['median_cpu_ratio']:.3f}** |"
        )
        out.append("")
    if results.get("login"):
        out += [
            "| upstream latency | path | p50 ms | p99 ms | mean ms | upstream calls/login | upstream ms/login "
            "| own ms (mean − upstream) | of which in the app | of which gunicorn/nginx/client | own share |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in results["login"]:
            out.append(
                f"| {r['upstream_latency_ms']:.0f} ms | {r['target']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
                f"| {r['mean_ms']:.1f} | {r['upstream_calls_per_login']} | {r['upstream_ms_per_login']:.1f} "
                f"| {r['own_ms']:.1f} | {r['own_in_app_ms']:.1f} | {r['own_front_ms']:.1f} "
                f"| {r['own_share'] * 100:.0f} % |"
            )
    return "\n".join(out)


def git_state() -> str:
    """The commit measured, and whether the working tree had uncommitted changes (gunicorn runs the tree)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True)
    except OSError:
        return "unknown"
    return head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")
