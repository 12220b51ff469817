# The streamscore worker image: CPU torch, a non-root user, no build tools in the final stage.
#   docker build -t streamscore .      (docker compose builds it for you)
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The CPU build of torch first, from PyTorch's CPU index: the default one pulls gigabytes of CUDA.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY models ./models
COPY schemas ./schemas
COPY training ./training
# The one installed package: its links (streamscore/streams -> ../streams, ...) point at the above.
COPY streamscore ./streamscore
RUN pip install ".[redis]" && pip check

FROM python:3.11-slim
RUN useradd --system --uid 10001 --create-home streamscore \
    && mkdir /artifacts && chown streamscore /artifacts
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The shipped CLINC150 copy (with its licence), for the one-shot trainer of docker-compose.
COPY datasets ./datasets
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    STREAMSCORE_REGISTRY=/artifacts \
    STREAMSCORE_METRICS_HOST=0.0.0.0
USER streamscore
EXPOSE 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=3)"]
ENTRYPOINT ["streamscore"]
CMD ["worker"]
