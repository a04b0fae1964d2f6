"""The local content-addressed store: blobs, images, tags, layers and snapshots."""
