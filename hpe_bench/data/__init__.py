"""Datasets producing ``hpe_bench.schema`` samples, their caches and the Lightning datamodule."""
