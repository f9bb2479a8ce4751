"""Evaluation: FID / KID / IS with clean-fid and an offline Inception network (docs/EVALUATION.md)."""
from hdit.metrics.cli import add_arguments, main
from hdit.metrics.compute import DEFAULT_MODE, compute_metrics
from hdit.metrics.images import ImageSet, MetricsError
from hdit.metrics.inception import ExtractorError, load_inception, tf_resize_bilinear
from hdit.metrics.refstats import DEFAULT_CACHE_DIR, reference_stats
from hdit.metrics.scores import (fid_bootstrap, fid_label, frechet_distance, inception_score,
                                 kernel_inception_distance)

__all__ = ["add_arguments", "main", "compute_metrics", "DEFAULT_MODE", "DEFAULT_CACHE_DIR", "ImageSet",
           "MetricsError", "ExtractorError", "load_inception", "tf_resize_bilinear", "reference_stats",
           "fid_bootstrap", "fid_label", "frechet_distance", "inception_score", "kernel_inception_distance"]
