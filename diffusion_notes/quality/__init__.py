r"""Measuring sample quality offline: a Fréchet distance, precision and recall, and error bars.

* :mod:`.frechet`: the Fréchet distance between two Gaussians fitted to feature vectors (Heusel et
  al. 2017, Eq. 6), computed stably in float64;
* :mod:`.precision_recall`: improved precision and recall (Kynkäänniemi et al. 2019), k-NN manifolds;
* :mod:`.features`: "FD-digits" features, the penultimate layer of a small digit classifier the package
  fits on the training digits (Inception weights cannot be downloaded here, so this is *not* FID);
* :mod:`.bootstrap`: a statistic's spread by resampling the generated set;
* :mod:`.inception`: FID proper, on FID's Inception-v3 (plain torch), only with a weights file the user supplies.
"""

from .bootstrap import Bootstrap, bootstrap, paired_bootstrap
from .frechet import feature_statistics, frechet_distance, frechet_distance_of_features
from .inception import fid, inception_features, load_fid_inception
from .precision_recall import kth_neighbour_radii, precision_recall

__all__ = ["frechet_distance", "feature_statistics", "frechet_distance_of_features", "precision_recall",
           "kth_neighbour_radii", "bootstrap", "paired_bootstrap", "Bootstrap", "fid", "inception_features",
           "load_fid_inception"]
