"""Scale-out: sharded corpus embedding (`shards`), Ray Data actors (`ray`, extra ``[ray]``), sweeps and
demonstration searches on Ray workers (`sweep`), and data-parallel contrastive fine-tuning under
``torchrun`` (`ddp`)."""
