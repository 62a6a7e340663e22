# The Modelyard app image: gunicorn behind WhiteNoise for static files; migrates on start.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=2 \
    MODELYARD_VAR_DIR=/var/lib/modelyard MODELYARD_PRODUCTION=true
WORKDIR /app

COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY . .
RUN MODELYARD_SECRET_KEY=build-only python manage.py collectstatic --noinput -v0 \
    && useradd --system --home /var/lib/modelyard modelyard \
    && mkdir -p /var/lib/modelyard && chown modelyard /var/lib/modelyard

USER modelyard
EXPOSE 8000
VOLUME ["/var/lib/modelyard"]
CMD ["sh", "-c", "python manage.py migrate --noinput && exec gunicorn config.wsgi:application --bind 0.0.0.0:8000 --workers ${GUNICORN_WORKERS:-2} --timeout 600"]
