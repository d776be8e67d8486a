"""Corral's in-guest VM agent: its C source, wire protocol and build step.

Why in ``shared``: the image service compiles it into VM images and the instance
service's QEMU driver speaks its protocol, so neither service may own it.
"""
