"""Export, runtime backends, parity checks, manifests, artifacts, the on-device benchmark, benchmarks on a device over
SSH (remote) and the fleet index.

Everything here except export and the backends' build() methods runs on the device without torch."""
