"""Shared network blocks: attention, ViT, RoPE, DPT head, embeddings."""
