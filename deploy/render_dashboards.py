"""Draw the Grafana dashboards' panels from the query results the observability test saved.

Grafana is not installable here; this plots what each panel's queries returned from the real
Prometheus of ``tests/test_observability.py``, laid out like the dashboard JSON.

    STREAMSCORE_PANEL_REPORT=/tmp/panels.json .venv/bin/python -m pytest tests/test_observability.py
    .venv/bin/pip install matplotlib
    .venv/bin/python deploy/render_dashboards.py /tmp/panels.json docs/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def legend(fmt: str, labels: dict[str, str]) -> str:
    for key, value in labels.items():
        fmt = fmt.replace("{{" + key + "}}", value)
    return fmt


def render(board_path: Path, report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = json.loads(board_path.read_text())
    panels = [p for p in board["panels"] if p["type"] != "table"]
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(14, 2.8 * rows), squeeze=False)
    t0 = min(
        (pt[0] for entry in report.values() for s in entry["series"] for pt in s.get("values", [])),
        default=0.0,
    )
    for ax, panel in zip(axes.flat, panels, strict=False):
        for target in panel["targets"]:
            entry = report.get(f"{board['title']} / {panel['title']} / {target['refId']}")
            for s in (entry or {}).get("series", [])[:8]:
                pts = s.get("values", [])
                if pts:
                    ax.plot(
                        [p[0] - t0 for p in pts],
                        [p[1] for p in pts],
                        label=legend(target.get("legendFormat", ""), s["labels"])[:40],
                        linewidth=1.2,
                    )
        ax.set_title(panel["title"], fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("seconds into the test run", fontsize=7)
        steps = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", [])
        for step in steps:
            if step.get("value") is not None:
                ax.axhline(step["value"], color="red", linestyle="--", linewidth=0.8)
        if len(ax.lines) > 6:  # many series: a legend beside the plot, not over it
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + len(ax.lines) // 12)
        elif ax.lines:
            ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"{board['title']} (queries of the dashboard, from a real Prometheus run)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    report = json.loads(Path(argv[0]).read_text())
    out_dir = Path(argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    for board in sorted((HERE / "grafana" / "dashboards").glob("*.json")):
        target = out_dir / f"dashboard-{board.stem}.png"
        render(board, report, target)
        print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
