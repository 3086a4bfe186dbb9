"""The two Lightning systems (stage 1: `vae.VAESystem`, stage 2: `denoiser.DenoiserSystem`) and their shared base."""
