"""The upstreams over httpx, one adapter per kind behind the `base.Provider` seam (OpenAI, its native Batch
API, Anthropic).

Imports only `core`; never Redis or the web framework.
"""
