"""hdit-repro: reproduce the tables and figures of HDiT (Crowson et al., ICML 2024)."""
__version__ = "0.1.0"
