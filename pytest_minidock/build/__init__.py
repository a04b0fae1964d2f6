"""Building images from a Dockerfile: the build context, the pure build plan and the builder.

Each module usable alone, none importing the runtime:

* ``ignore``: ``.dockerignore`` matching and context walking, as docker does it.
* ``context``: what ``COPY``/``ADD`` see and the digests of what they read (with a stat cache),
  ``ADD``'s archives and downloads.
* ``plan``: each step's cache key from its definition (pure, property-tested).
* ``config``: what each instruction does to the image config, and its history wording (pure).
* ``rootfs``: a read-only merged view of an image's layers; ``files``: ``COPY``/``ADD``/
  ``WORKDIR`` layers as reproducible tars.
* ``cache``: the build cache under the store root (entries, single-flight locks, cache mounts).
* ``runner``: the ``StepRunner`` protocol ``RUN`` steps go through (``api.Engine`` implements it
  over the runtime); ``mounts``: ``RUN --mount`` resolved to host paths for it.
* ``steps``: each kind of step's inputs and execution; ``progress``: build events and
  BuildKit-style printers; ``request``: ``BuildRequest`` and ``BuildResult``.
* ``builder``: ``Builder.build`` ties them together (stages in threads, cache, export), and
  says what its result rests on (``BuildResult.inputs``);
* ``memo``: from that, build memos that let ``minidock build`` answer a rebuild nothing changed
  for without importing any of the above.

Records a build makes a handful of (requests, results, plans, cache entries) are not slotted:
``slots=True`` makes a record class about a third dearer to create, which every build pays at
import; those made per context file or per layer entry are.
"""
