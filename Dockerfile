# medrobust dashboard, ready to host (README, "Hosting (Docker)"):
#   docker build -t medrobust . && docker run -p 8501:8501 -v medrobust-runs:/app/runs -e MEDROBUST_DEMO=1 medrobust
# A much smaller CPU-only image (no CUDA libraries): add --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# The base image is a build argument so that scripts/container_check.sh can build on a local stand-in
# where no registry can be reached; the default is unchanged.
ARG BASE_IMAGE=python:3.11-slim

# Stage 1: the app's files, made world-readable and read-only whatever their mode in the build
# context (safetensors writes 0600 files, which the unprivileged user below could not read).
FROM ${BASE_IMAGE} AS app-files
WORKDIR /src
COPY app.py ./
COPY medrobust/ medrobust/
COPY views/ views/
COPY .streamlit/ .streamlit/
COPY checkpoints/ checkpoints/
RUN chmod -R a+rX,go-w /src

FROM ${BASE_IMAGE}

# MALLOC_ARENA_MAX=2: glibc otherwise gives each of the server's many threads its own malloc arena, and the
# freed tensor memory of 100 concurrent visitors stays fragmented across them (benchmarks/load_test.py,
# 100 x 3: peak RSS 1727 -> 1514 MiB, latency unchanged). No file watcher: the image's code never changes,
# and the watcher walked every imported module at each rerun (4.5 % of the server's time under load).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MALLOC_ARENA_MAX=2 \
    STREAMLIT_SERVER_FILE_WATCHER_TYPE=none \
    MEDROBUST_CHECKPOINTS=/app/checkpoints \
    MEDROBUST_RUNS=/app/runs \
    MEDROBUST_CACHE=/app/runs/.cache

WORKDIR /app

# One layer for the dependencies (pyproject's core + "app" extra at the versions of constraints.txt), so
# code changes do not reinstall torch: only the version file of the package is needed to resolve them,
# and the partial package is uninstalled again; the app runs from /app.
ARG TORCH_INDEX_URL=
COPY pyproject.toml constraints.txt README.md ./
COPY medrobust/__init__.py medrobust/__init__.py
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -c constraints.txt ".[app]" \
    && pip uninstall -y medrobust && rm -rf medrobust build ./*.egg-info

COPY --from=app-files /src/ /app/

# Training output (runs, jobs, the data cache) goes to a volume owned by the unprivileged user;
# everything else in /app belongs to root and is read-only to it.
RUN useradd --uid 1000 --create-home --shell /usr/sbin/nologin medrobust \
    && mkdir -p /app/runs \
    && chown -R 1000:1000 /app/runs
VOLUME ["/app/runs"]
USER 1000

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4).status == 200 else 1)"

ENTRYPOINT ["streamlit", "run", "app.py", "--server.port=8501", "--server.address=0.0.0.0"]
