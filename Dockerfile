# The rotator image (used by docker-compose.yml; not built in CI).
FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY tasks ./tasks
RUN pip install --no-cache-dir .
RUN mkdir -p /var/lib/rotator/audit && chown -R nobody /var/lib/rotator
# audit rows wait here until Databend has them: mount a volume on /var/lib/rotator
ENV ROTATOR_AUDIT_SPOOL=/var/lib/rotator/audit
USER nobody
ENTRYPOINT ["rotator"]
CMD ["worker"]
