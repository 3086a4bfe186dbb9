"""Sample-quality metrics.

- `fid`: FID through torchmetrics with Inception-v3 or a domain classifier's features, cached real statistics.
- `pixel`: features that keep style and sharpness (area-downsampled pixels on real-data principal components).
- `precision_recall`: improved precision and recall (Kynkäänniemi et al. 2019) on k-nearest-neighbour manifolds, and
  coverage (Naeem et al. 2020), which noisy samples cannot inflate.
- `budget`: the error budget: samples, the real floor and the VAE round trip, scored the same way.
"""
