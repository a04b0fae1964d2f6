"""The OCI image data model: descriptors, manifests, indexes, configs, and image sources/sinks."""
