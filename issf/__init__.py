"""issf: weakly-supervised temporal action localization with ISSF."""
__version__ = "0.1.0"
