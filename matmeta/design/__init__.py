"""Inverse-design app: a meta-learned conditional decoder proposes perovskites for a band-gap window."""
