"""STS evaluation with SentEval's conventions, as the SimCSE / PromptBERT / PromptEOL scripts compute it.

Seven tasks (`TASKS`): STS12-16 scored as one Spearman over all their subsets pooled ("all", SimCSE's
SentEval fork; Gao et al., 2021), STS-B and SICK-R scored on their test split; Spearman x 100 of the cosine
similarity against gold. Data comes from a local SentEval copy (`data_dir` / $PROMPTLAB_DATA) or, with
`source="hub"`, from MTEB's hub datasets. Encoders are reached only through `encode(list[str]) -> array`.

    from promptlab.evaluation import evaluate, format_table
    result = evaluate(embedder.encode, data_dir="/path/to/senteval")
    print(format_table({"my-model": result}))
"""

from __future__ import annotations

from promptlab.evaluation.data import ENV_VAR, STSPairs, load_task, resolve_data_dir, sts_dev, subset_pairs
from promptlab.evaluation.results import EvalResult, format_table
from promptlab.evaluation.runner import Suite, evaluate, load_suite
from promptlab.evaluation.scoring import TaskScore, cosine_pairs, score_encoder, score_pairs, spearman100
from promptlab.evaluation.tasks import TASKS, canonical_task

__all__ = [
    "ENV_VAR",
    "TASKS",
    "EvalResult",
    "STSPairs",
    "Suite",
    "TaskScore",
    "canonical_task",
    "cosine_pairs",
    "evaluate",
    "format_table",
    "load_suite",
    "load_task",
    "resolve_data_dir",
    "score_encoder",
    "score_pairs",
    "spearman100",
    "sts_dev",
    "subset_pairs",
]
