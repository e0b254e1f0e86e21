"""The data: token shards, ingest, tokenizer, data order and cursors, the sampler, replay buffers, built-in corpora."""
