"""Experiments: prompt sweeps, demonstration search, reports with plots, built on `Embedder` and evaluation.

- `sweep`: models x templates x layers x demonstrations x dtypes, one forward pass per template for all layers
- `search`: score every candidate demonstration of a pool on STS-B dev
- `report`: markdown tables and PNG plots from the results files
- `results`: the append-only, resumable JSONL files every experiment writes
- `workers`: where an experiment's jobs run: here, or on Ray workers (`promptlab.distributed.sweep`)
- `pool`: how the self-labelled demonstration pool was built

Nothing here is imported by `import promptlab`; torch loads only when an experiment runs.
"""
