"""Prints the table of a sweep directory (scripts/sweep.sh): one row per run, then the
median and minimum gold win rate, in Markdown."""
import json
import statistics
import sys
from pathlib import Path

out = Path(sys.argv[1])
rows = []
for run in sorted(p for p in out.iterdir() if (p / "wall_seconds").exists()):
    s = json.loads((run / "summary.json").read_text())
    c = json.loads((run / "config.json").read_text())
    wall = run / "wall_seconds"
    rows.append(
        (
            run.name,
            c["seed"],
            c["collect"]["k"],
            s.get("rm_accuracy_vs_ceiling"),
            s.get("gold_win_rate_vs_sft"),
            s.get("kl_to_sft"),
            "yes" if s.get("hacking_alarm") else "no",
            int(wall.read_text()) if wall.exists() else None,
        )
    )
fmt = lambda v, p=3: "—" if v is None else (f"{v:.{p}f}" if isinstance(v, float) else str(v))
print("| run | seed | K | RM / ceiling | gold win | KL | alarm | wall s |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(fmt(v) for v in r) + " |")
wins = [r[4] for r in rows if r[4] is not None]
if wins:
    print(f"\nwin rate: median {statistics.median(wins):.3f}, min {min(wins):.3f} over {len(wins)} runs")
