"""The daemonless container runtime: namespaces, mounts, cgroups, processes and on-disk state."""
