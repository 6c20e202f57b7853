# hybrid-router: slim image, non-root, talks to a real Redis (REDIS_URL); no bundled Redis needed.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY router ./router
# The wheel carries these as the packaged defaults (pyproject's force-include).
COPY config/router.yaml config/pricing.yaml ./config/
COPY policies ./policies
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN useradd --create-home --uid 10001 router
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# The config, prices and policies shipped in the wheel apply unless /app/config/router.yaml,
# /app/config/pricing.yaml or /app/policies/ are mounted (see config/docker-compose.yml).
USER router
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["hybrid-router"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
