"""Automatic latent names with honest scores.

Every latent is a detector: it fires (code > 0) on some patches. Each candidate name (a concept of
the built-in world, a mask label, an image's class, a word a CLIP-family model matches to the
image) is true on some patches or images. A latent takes the candidate it detects best, by F1, on
half of the images; the precision, recall and F1 it reports are measured on the other half, so a
score is never tuned on itself. Below `min_f1` on the choosing half the latent is left
unexplained rather than given a guess.
"""
