"""studykit: a Hydra + Lightning experiment framework for image studies."""

__version__ = "0.1.0"
