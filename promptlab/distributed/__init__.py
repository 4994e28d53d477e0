"""Scale-out: sharded corpus embedding (`shards`), Ray Data actors (`ray`, extra ``[ray]``) and
data-parallel contrastive fine-tuning under ``torchrun`` (`ddp`)."""
