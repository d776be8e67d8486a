"""Corral's in-guest VM agent (C source, built at image build time) and its host client."""
