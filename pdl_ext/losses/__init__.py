"""The losses: PDL (projected distribution loss on a backbone's features), MDF (a single-image
discriminator series as the feature extractor), NIMA (a no-reference quality model as a loss), their
backbones (VGG) and the pixel terms they add."""
