# syntax=docker/dockerfile:1
# One image for the whole fleet: every declared service's console script (mc-pql, mc-limiter,
# ...) is on PATH; the Helm chart picks one per component with `command`. Dependencies come
# from uv.lock exactly (--frozen); no dev tools, no test extras; runs as uid 10001.
#   buildah bud -t maestro-conductor:0.1.0 .     (or: docker build -t maestro-conductor:0.1.0 .)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.9.5

FROM ${UV_IMAGE} AS uv

FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Dependencies first (cached until uv.lock or a pyproject changes), then the code.
COPY pyproject.toml uv.lock ./
COPY libs libs
COPY services services
RUN uv sync --frozen --no-dev --no-editable --all-packages --compile-bytecode

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 mc \
    && useradd --system --uid 10001 --gid mc --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin mc
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app
USER 10001:10001
# The chart sets the command per component; alone, the image shows what it holds.
CMD ["python", "-c", "import importlib.metadata as m; print(sorted(e.name for e in m.entry_points(group='mc.services')))"]
