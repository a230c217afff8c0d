"""The rule of torch.einsum of two operands (attention written with einsum, MaxViT)."""
