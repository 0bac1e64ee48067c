"""Drop-in replacements for asyncgraph's ancestors, built on asyncgraph's own engine.

``import asyncgraph.compat.taskmap as taskmap`` offers taskmap 0.0.6's module API. Nothing
here is imported by ``import asyncgraph``.
"""
