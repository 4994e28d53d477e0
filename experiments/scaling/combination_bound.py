"""The most any weighting of finished evals can score on the test suite: a bound, not a result.

Each STS pair's cosine under a weighted combination of embedders read at one layer is the weighted mean of
their logged cosines (`promptlab combine-logs`), so every weighting of the given task logs is scored from them
with no model run. The best weighting *read on the test suite* is printed with its per-task scores: no
selection on dev can do better, so when it falls short of a target, no combination of these members reaches
it, whatever dev chooses.

    python experiments/scaling/combination_bound.py --step 0.05 \\
        experiments/scaling/work/qwen2.5-coder-1.5b--cse.tasks.jsonl \\
        experiments/scaling/work/qwen2.5-coder-1.5b--demo.tasks.jsonl

(from the repository root, $PROMPTLAB_DATA set; a 0.05 grid over four logs, 1,771 weightings, took 2.8 min
on 2 cores beside a training run.)
"""

from __future__ import annotations

import argparse

from promptlab.evaluation import load_suite
from promptlab.evaluation.logged_combination import read_logged_evaluation, score_combination, weight_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", help="the test task log of each member's finished eval")
    parser.add_argument("--step", type=float, default=0.05, help="the weights' grid step (default 0.05)")
    parser.add_argument("--top", type=int, default=5, help="how many of the best weightings to print")
    args = parser.parse_args()
    suite = load_suite(None, split="test")
    members = [read_logged_evaluation(log, suite) for log in args.logs]
    scored = [(score_combination(members, w, suite), w) for w in weight_grid(len(members), args.step)]
    scored.sort(key=lambda item: -item[0].average)
    for log, member in zip(args.logs, members, strict=True):
        print(f"alone: {score_combination([member], [1.0], suite).average:.2f}  {log}")
    print(f"{len(scored)} weightings; the best read on the test suite (weights in the order of the logs):")
    for result, weights in scored[: args.top]:
        tasks = " / ".join(f"{result.scores[name]:.2f}" for name in suite.names)
        print(f"  {', '.join(f'{w:g}' for w in weights)}: {result.average:.2f}  ({tasks})")


if __name__ == "__main__":
    main()
