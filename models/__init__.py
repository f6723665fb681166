"""Plain-PyTorch model code for gsv-serve (no Ray, no HTTP)."""
