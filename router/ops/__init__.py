"""Running the router: the `hybrid-router` command, `serve --workers`, the bundled Redis, serving, the demo, estimate.

Imports anything; nothing imports it but `router.__main__`.
"""
