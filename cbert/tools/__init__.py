"""Tools around the model: prepare, hub download, parity, bench, attention maps."""
