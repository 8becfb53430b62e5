"""hpe_bench: a PyTorch Lightning + Hydra benchmark suite for head pose estimation."""
__version__ = "0.1.0"
