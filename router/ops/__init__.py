"""Running the router: the `hybrid-router` command, `serve --workers`, the bundled Redis, serving, demo, estimate.
May import every other package; nothing imports it but `router.__main__`.
"""
