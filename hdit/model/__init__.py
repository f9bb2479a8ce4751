"""HDiT (paper §4): layers (AdaRMSNorm, RoPE, GEGLU, mapping network), attention backends and the hourglass.
Models of every family, baselines included, are built by `hdit.backbones.build_model`."""
