"""The ISSF network (plain PyTorch, no Lightning): embedding, saliency selection, interaction
units, salient memory, classification head, losses, and the network config.

May import: ``issf.utils``.
"""
