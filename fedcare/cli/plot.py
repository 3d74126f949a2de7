"""Learning-curve PNGs from a run's history (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from fedcare.server.history import History


def learning_curve(history: History, path: Path, *, metric: str = "accuracy",
                   title: str = "") -> Path:
    """Global (sample-weighted) and per-site evaluation ``metric`` against the round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    sites = sorted({s for r in history.rounds for s in r.site_eval})
    for site_id in sites:
        points = history.metric(metric, site_id=site_id)
        if points:
            ax.plot(*zip(*points, strict=True), lw=1, alpha=0.7, label=site_id)
    points = history.metric(metric)
    if points:
        ax.plot(*zip(*points, strict=True), lw=2.5, color="black", label="all sites (weighted)")
    ax.set_xlabel("round (0 = initial model)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(title or f"federated evaluation: {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
