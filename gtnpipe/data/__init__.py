"""Datasets: Fashion-MNIST from the Debian package, ImageFolder, IDX files; splits and fingerprints."""
