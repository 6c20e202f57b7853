# hybrid-router: slim image, non-root, talks to a real Redis (REDIS_URL); no bundled Redis needed.
FROM python:3.12-slim AS build
WORKDIR /src
# The dependencies first, in a layer of their own: rebuilt only when pyproject.toml changes, not with the code.
# With the `otel` extra, so the image exports traces when OTEL_EXPORTER_OTLP_ENDPOINT is set (off otherwise).
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['otel']))" > requirements.txt \
 && pip wheel --no-cache-dir --wheel-dir /wheels/deps -r requirements.txt
# Then the code. The wheel carries the config, prices and policies as packaged defaults (pyproject's force-include).
COPY README.md ./
COPY router ./router
COPY config/router.yaml config/pricing.yaml ./config/
COPY policies ./policies
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels/app .

FROM python:3.12-slim
# Host and port are settings (HYBRID_ROUTER_*), so `serve` and the health check read the same ones.
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HYBRID_ROUTER_HOST=0.0.0.0 HYBRID_ROUTER_PORT=8080
RUN useradd --create-home --uid 10001 router
WORKDIR /app
RUN --mount=type=bind,from=build,source=/wheels/deps,target=/wheels/deps \
    pip install --no-cache-dir --no-index /wheels/deps/*.whl
RUN --mount=type=bind,from=build,source=/wheels/app,target=/wheels/app \
    pip install --no-cache-dir --no-index --no-deps /wheels/app/*.whl
# The config, prices and policies shipped in the wheel apply unless /app/config/router.yaml,
# /app/config/pricing.yaml or /app/policies/ are mounted (see config/docker-compose.yml).
USER router
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 CMD ["hybrid-router", "healthcheck"]
ENTRYPOINT ["hybrid-router"]
CMD ["serve"]
