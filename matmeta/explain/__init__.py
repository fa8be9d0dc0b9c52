"""Which support points steered an adaptation: exact leave-one-out and a fast influence estimate."""
