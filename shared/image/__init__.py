"""LXD's image format, fingerprints, safe unpacking and template rendering.

Why in ``shared``: the image service inspects images, the storage service unpacks
them into image volumes, the instance service renders their templates and the CLI
detects their format; one library keeps the four in agreement.
"""
