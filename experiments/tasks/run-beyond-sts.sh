#!/usr/bin/env bash
# Every SmolLM2-135M configuration on the tasks beyond STS: TREC QA reranking (dev: its only split without
# training use), SICK entailment pair classification and STS-B retrieval (test splits: the searched
# demonstration and the CSE adapter were chosen on STS-B dev). One torch thread; each finished record is
# kept and skipped on a rerun, and vectors go to the embedding cache as they are computed.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
out=experiments/tasks
declare -A configs=(
  [prompteol]="--template prompteol"
  [searched]="--template eol-topic --layer 28 --demonstration best-of:experiments/results/search-smollm2-eol-topic-l28.jsonl"
  [cse-lora]="--adapter experiments/finetune/runs/smollm2-sup-lora/best"
  [mean]="--template none --pooling mean"
)
for name in prompteol searched cse-lora mean; do
  for split in dev test; do
    if [ "$split" = dev ]; then tasks=TRECQA-rerank; tag=trecqa-dev; else tasks=SICK-pairclass,STSB-retrieval; tag=pairclass-retrieval-test; fi
    record="$out/$tag-smollm2-$name.json"
    [ -f "$record" ] && { echo "have $record"; continue; }
    # shellcheck disable=SC2086
    promptlab eval --model smollm2-135m ${configs[$name]} --dtype float32 --tasks "$tasks" --split "$split" \
      --output "$record"
  done
done
