"""Callbacks of a training run: image grids, graceful stop on signals, rank checks, RNG state, continuous logs."""
