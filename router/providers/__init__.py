"""The upstreams over httpx, one adapter per kind behind `base.Provider`, and which upstream serves a model.
May import `core` only; never Redis or a web framework.
"""
