"""Export, runtime backends, parity checks, manifests, artifacts and the on-device benchmark.

Everything here except export and the backends' build() methods runs on the device without torch."""
