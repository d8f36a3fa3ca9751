from studykit.metrics.landmark import LandmarkErrorMetrics, QUALITY_BINS

__all__ = ["LandmarkErrorMetrics", "QUALITY_BINS"]
