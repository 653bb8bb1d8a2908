"""dfdc-kit: a submission kit for Kaggle's Deepfake Detection Challenge."""

__version__ = "0.1.0"
