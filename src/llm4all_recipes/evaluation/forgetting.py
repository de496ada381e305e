"""Learning vs forgetting: old- and new-domain perplexity before/after, as a markdown table and a plot.

The plot puts each model at (new-domain perplexity, old-domain perplexity): learning moves a point left,
forgetting moves it up; arrows join a model to the one it was trained from.
"""

from pathlib import Path


def table(rows: list[dict], old: str, new: str) -> str:
    """rows: {"model", "old", "new"} perplexities, the first row being the reference (before)."""
    ref = rows[0]
    lines = [
        f"| model | {old} perplexity (forgetting) | {new} perplexity (learning) |",
        "|---|---:|---:|",
    ]
    for r in rows:
        d_old = f" ({(r['old'] / ref['old'] - 1):+.1%})" if r is not ref else ""
        d_new = f" ({(r['new'] / ref['new'] - 1):+.1%})" if r is not ref else ""
        lines.append(f"| {r['model']} | {r['old']:.2f}{d_old} | {r['new']:.2f}{d_new} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str | Path, old: str, new: str, arrows: list[tuple[int, int]] | None = None) -> Path:
    """Write a PNG: one point per row at (new, old) perplexity; `arrows` joins row i to row j."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    for r in rows:
        ax.scatter(r["new"], r["old"], s=40)
        ax.annotate(r["model"], (r["new"], r["old"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    for i, j in arrows or [(0, k) for k in range(1, len(rows))]:
        ax.annotate(
            "",
            xy=(rows[j]["new"], rows[j]["old"]),
            xytext=(rows[i]["new"], rows[i]["old"]),
            arrowprops={"arrowstyle": "->", "color": "0.5"},
        )
    ax.set_xlabel(f"{new} perplexity  (← learning)")
    ax.set_ylabel(f"{old} perplexity  (↑ forgetting)")
    ax.set_title("Learning vs forgetting")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
