"""saev: sparse autoencoders for vision transformers.

Subpackages are imported on demand (`import saev.nn`, `import saev.activations`) so that
`saev --help` and `import saev` stay fast.
"""

__version__ = "0.2.0"
