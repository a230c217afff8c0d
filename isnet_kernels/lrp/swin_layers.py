"""Rules of torchvision's Swin Transformer functions (registered by dotted name; torchvision need not be imported)."""
