"""Smaller and cheaper models: distilled students, LoRA adapters, linear probes on embeddings."""
