"""Pictures of a model and its training: reconstructions, latent traversals (PNG grid, GIF), curves."""
from untwine.viz.curves import plot_beta_kl, plot_training_curves, read_log
from untwine.viz.images import image_grid, reconstruction_grid, save_image, save_reconstructions
from untwine.viz.traversals import Traversal, latent_traversal, save_traversals, traversal_grid

__all__ = [
    "Traversal",
    "image_grid",
    "latent_traversal",
    "plot_beta_kl",
    "plot_training_curves",
    "read_log",
    "reconstruction_grid",
    "save_image",
    "save_reconstructions",
    "save_traversals",
    "traversal_grid",
]
