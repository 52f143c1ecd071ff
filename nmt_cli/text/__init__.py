"""Text: raw bitext in, normalized, filtered and tokenized into token shards out."""
