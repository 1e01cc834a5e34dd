"""PNG plots of a run: throughput and P99 against concurrency per endpoint (batching on,
off and the peers as lines), and the soak's RSS over time."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.run_result import RunResult

STYLE = {"on": ("audioserve, batching on", "-o"), "off": ("audioserve, max_batch_size=1", "--s"),
         "on-clap": ("audioserve, batching on, CLAP only", "-D"),
         "litserve": ("LitServe", ":^"), "rayserve": ("Ray Serve", "-.v"),
         "cluster": ("audioserve on Ray Serve, 1 replica each", "-x"),
         "cluster-2clap": ("audioserve on Ray Serve, 2 CLAP replicas", "--x"),
         "cluster-haproxy": ("audioserve on Ray Serve, HAProxy ingress", ":x")}


def sweep_plot(run: RunResult, endpoint: str, out: Path) -> Path | None:
    fig, (ax_rps, ax_p99) = plt.subplots(1, 2, figsize=(11, 4))
    drawn = False
    for cfg in run.configs:
        points = cfg.points(endpoint)
        if not points:
            continue
        label, style = STYLE.get(cfg.key, (cfg.key, "-"))
        xs = [p.load.concurrency for p in points]
        ax_rps.plot(xs, [p.load.ok_rps for p in points], style, label=label)
        ax_p99.plot(xs, [p.load.p99_ms for p in points], style, label=label)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    for ax, title in ((ax_rps, "successful requests/s"), (ax_p99, "P99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent connections (wrk)")
        ax.set_title(f"/{endpoint}: {title}")
        ax.grid(True, alpha=0.3)
    ax_p99.set_yscale("log")
    ax_rps.legend(fontsize=8)
    fig.tight_layout()
    path = out / f"{endpoint}_sweep.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def soak_plot(run: RunResult, out: Path) -> Path | None:
    if run.soak is None or not run.soak.rss_timeline:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs, ys = zip(*run.soak.rss_timeline, strict=True)
    ax.plot([x / 60 for x in xs], ys, "-")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS, process tree (MB)")
    ax.set_title("soak: server memory")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = out / "soak_rss.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(run: RunResult, out: Path) -> list[Path]:
    paths = [sweep_plot(run, ep, out) for ep in run.endpoints()]
    paths.append(soak_plot(run, out))
    return [p for p in paths if p is not None]
