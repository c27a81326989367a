"""Pictures of a model and its training: reconstructions, latent traversals (PNG grid, GIF), curves;
multi-stage side-by-side grids, two-stage traversals, samples and the trade-off plot."""
from untwine.viz.curves import plot_beta_kl, plot_training_curves, read_log
from untwine.viz.images import image_grid, reconstruction_grid, save_image, save_reconstructions
from untwine.viz.multistage import plot_tradeoff, save_multistage_traversals, save_samples, save_side_by_side
from untwine.viz.traversals import Traversal, latent_traversal, save_traversals, traversal_grid

__all__ = [
    "Traversal",
    "image_grid",
    "latent_traversal",
    "plot_beta_kl",
    "plot_training_curves",
    "plot_tradeoff",
    "read_log",
    "reconstruction_grid",
    "save_image",
    "save_multistage_traversals",
    "save_samples",
    "save_side_by_side",
    "save_reconstructions",
    "save_traversals",
    "traversal_grid",
]
