FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /srv
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY migrations ./migrations
RUN pip install --no-cache-dir . \
 && useradd --create-home --uid 10001 meshhook
USER meshhook
EXPOSE 8000
# DATABASE_URL, SUPABASE_URL / SUPABASE_JWT_SECRET and MESHHOOK_SECRET_KEY come from the environment.
CMD ["meshhook", "serve", "--host", "0.0.0.0", "--port", "8000"]
