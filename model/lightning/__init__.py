"""Training with Lightning: `systems/` (the VAE and denoiser LightningModules), `callbacks/`, `trainer.py` (the
Trainer of a stage, built from the config), `compat.py` (every private framework attribute the package relies on),
`checkpoint_io.py` (atomic saves), `latent_cache.py` (encoded training latents) and `slurm.py` (cluster plugins and
requeue). Sampling and evaluation never import this package (`model/pipeline.py`)."""
