# The rotator worker image (used by docker-compose.yml; not built in CI).
FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY tasks ./tasks
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["rotator"]
CMD ["worker"]
