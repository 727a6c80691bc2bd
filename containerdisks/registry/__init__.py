"""The registry layer: places (a registry namespace or a layout directory), copying an image by
digest between them, walking an index to its platform images, and reading what is published.

It sits on `containerdisks.oci` (the client and the layout store) and is used by the engine
(plan, publish, promote, prune) and by verify's pull; it imports nothing of either.
"""
