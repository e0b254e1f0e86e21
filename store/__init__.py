"""Everything persistent: run store, records shared by all layers, token shards, errors."""
