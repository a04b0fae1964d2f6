"""Building images from a Dockerfile: the build context, the pure build plan and the builder."""
