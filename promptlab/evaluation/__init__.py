"""Evaluation: STS with SentEval's conventions, as the SimCSE / PromptBERT / PromptEOL scripts compute it,
and tasks beyond STS (reranking, retrieval, pair classification; `promptlab.evaluation.catalog`).

Seven tasks (`TASKS`): STS12-16 scored as one Spearman over all their subsets pooled ("all", SimCSE's
SentEval fork; Gao et al., 2021), STS-B and SICK-R scored on their test split; Spearman x 100 of the cosine
similarity against gold. Data comes from a local SentEval copy (`data_dir` / $PROMPTLAB_DATA) or, with
`source="hub"`, from MTEB's hub datasets. Encoders are reached only through `encode(list[str]) -> array`.
Every task follows one `Task` protocol (`promptlab.evaluation.protocol`): it names its sentences, and
scores their vectors into a typed result whose `score` is its main metric x 100. `evaluate` encodes each
distinct sentence of all the tasks once (`evaluate_layers`: once for several layers).

    from promptlab.evaluation import evaluate, format_table
    result = evaluate(embedder.encode, data_dir="/path/to/senteval")
    print(format_table({"my-model": result}))

    result = evaluate(embedder.encode, ["TRECQA-rerank", "SICK-pairclass", "STSB-retrieval"], split="dev")
"""

from __future__ import annotations

from promptlab.evaluation.catalog import CATALOG, TaskEntry, load_task_split, resolve_task
from promptlab.evaluation.data import ENV_VAR, STSPairs, load_task, resolve_data_dir, sts_dev, subset_pairs
from promptlab.evaluation.protocol import TASK_TYPES, Task, TaskResult, TaskType, Vectors
from promptlab.evaluation.results import EvalResult, format_table
from promptlab.evaluation.runner import Suite, evaluate, evaluate_layers, load_suite, score_suite
from promptlab.evaluation.scoring import TaskScore, cosine_pairs, score_encoder, score_pairs, spearman100
from promptlab.evaluation.task_types import (
    PairClassificationScore,
    PairClassificationTask,
    RerankingScore,
    RerankingTask,
    RetrievalScore,
    RetrievalTask,
    STSTask,
)
from promptlab.evaluation.tasks import TASKS, canonical_task

__all__ = [
    "CATALOG",
    "ENV_VAR",
    "TASKS",
    "TASK_TYPES",
    "EvalResult",
    "PairClassificationScore",
    "PairClassificationTask",
    "RerankingScore",
    "RerankingTask",
    "RetrievalScore",
    "RetrievalTask",
    "STSPairs",
    "STSTask",
    "Suite",
    "Task",
    "TaskEntry",
    "TaskResult",
    "TaskScore",
    "TaskType",
    "Vectors",
    "canonical_task",
    "cosine_pairs",
    "evaluate",
    "evaluate_layers",
    "format_table",
    "load_suite",
    "load_task",
    "load_task_split",
    "resolve_task",
    "score_suite",
    "resolve_data_dir",
    "score_encoder",
    "score_pairs",
    "spearman100",
    "sts_dev",
    "subset_pairs",
]
