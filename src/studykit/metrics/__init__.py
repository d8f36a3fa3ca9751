from studykit.metrics.landmark import QUALITY_BINS, LandmarkErrorMetrics

__all__ = ["LandmarkErrorMetrics", "QUALITY_BINS"]
