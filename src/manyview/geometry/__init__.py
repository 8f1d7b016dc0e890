"""Functional camera geometry: batched tensors in, tensors out, no scene types required."""
