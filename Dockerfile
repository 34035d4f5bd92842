# medrobust dashboard, ready to host: docker build -t medrobust . && docker run -p 8501:8501 medrobust
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MEDROBUST_CHECKPOINTS=/app/checkpoints \
    MEDROBUST_RUNS=/app/runs \
    MEDROBUST_CACHE=/app/runs/.cache

WORKDIR /app

# One layer for the dependencies, so code changes do not reinstall torch.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY medrobust/ medrobust/
COPY pages/ pages/
COPY app.py .
COPY .streamlit/ .streamlit/
COPY checkpoints/ checkpoints/

# Training output goes to a volume owned by the unprivileged user.
RUN useradd --uid 1000 --create-home --shell /usr/sbin/nologin medrobust \
    && mkdir -p /app/runs \
    && chown -R 1000:1000 /app/runs
VOLUME ["/app/runs"]
USER 1000

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4).status == 200 else 1)"

ENTRYPOINT ["streamlit", "run", "app.py", "--server.port=8501", "--server.address=0.0.0.0"]
