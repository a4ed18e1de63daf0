"""Side by side: a few train.py runs, as a table of what they ended with and one metric over steps.

    python benchmarks/compare_runs.py runs/lab1-grpo runs/lab1-dapo              # entropy over steps
    python benchmarks/compare_runs.py runs/lab3-* --metric entropy/knob --png knob.png

For each run directory (its metrics.jsonl): the held-out pass@k before and after RL, the entropy and
mean reward of the first and last 10% of the steps, and the controller's tracking error per phase.
Then a plain-text plot of `--metric` with one mark per run (and a PNG with matplotlib, `--png`).
The labs of docs/labs.md read their results this way.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train import text_plot  # noqa: E402

MARKS = "*o+x#@%&"


def load(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise SystemExit(f"{run_dir}: no metrics.jsonl (is it a train.py --out_dir?)")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summary(rows: list[dict]) -> dict:
    """What a run ended with: means over its first and last 10% of steps, pass@k first and last."""
    tenth = max(1, len(rows) // 10)

    def mean(key, part):
        values = [r[key] for r in part if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    evals = [r for r in rows if "eval/pass@1" in r]
    ks = sorted(int(k.split("@")[1]) for k in (evals[-1] if evals else {}) if k.startswith("eval/pass@"))
    out = {"steps": len(rows), "H first": mean("entropy", rows[:tenth]),
           "H last": mean("entropy", rows[-tenth:]), "reward first": mean("reward/mean", rows[:tenth]),
           "reward last": mean("reward/mean", rows[-tenth:]),
           "track stable": rows[-1].get("entropy/track_err_stable"),
           "track anneal": rows[-1].get("entropy/track_err_anneal")}
    for k in ks:
        out[f"pass@{k} before"] = evals[0].get(f"eval/pass@{k}") if evals[0]["step"] == 0 else None
        out[f"pass@{k} after"] = evals[-1].get(f"eval/pass@{k}")
    return out


def table(runs: dict[str, dict]) -> str:
    columns = list(dict.fromkeys(key for s in runs.values() for key in s))
    name_width = max(len(name) for name in runs)
    lines = [" " * name_width + "".join(f"{c:>15}" for c in columns)]
    for name, s in runs.items():
        cells = ["-" if s.get(c) is None else f"{s[c]:.3f}" if isinstance(s[c], float) else str(s[c])
                 for c in columns]
        lines.append(f"{name:<{name_width}}" + "".join(f"{c:>15}" for c in cells))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="train.py output directories")
    parser.add_argument("--metric", default="entropy", help="a key of metrics.jsonl to plot over steps")
    parser.add_argument("--png", default=None, help="also draw the metric into this PNG (matplotlib)")
    args = parser.parse_args(argv)
    if args.png:
        try:
            import matplotlib  # noqa: F401  (drawn below, after the table)
        except ImportError:
            parser.error("--png needs matplotlib: pip install matplotlib (or leave --png out)")
    rows = {os.path.basename(os.path.normpath(d)): load(d) for d in args.runs}
    print(table({name: summary(r) for name, r in rows.items()}))
    marks = {name: MARKS[i % len(MARKS)] for i, name in enumerate(rows)}
    print()
    print(text_plot({marks[name]: [x.get(args.metric) for x in r] for name, r in rows.items()},
                    f"{args.metric}: " + ", ".join(f"{m} {name}" for name, m in marks.items())))
    if args.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        for name, r in rows.items():
            ax.plot([x["step"] for x in r], [x.get(args.metric) for x in r], label=name)
        ax.set(xlabel="step", ylabel=args.metric)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.png, dpi=90)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
