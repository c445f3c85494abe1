# The one sipreg image: the chart's operator Deployment runs `sipreg operator`, and the registrar
# pods the operator makes run `sipreg registrar` (the arguments are the pod's; ENTRYPOINT is sipreg).
#   docker build -t ghcr.io/sipreg/sipreg:0.1.0 .

# Build stage: the project as a wheel, with wheels of everything it needs, so the final stage
# installs from local files only and carries no build leftovers. The full python image has the C
# compiler mypyc needs: the SIP core is compiled (setup.py), and SIPREG_COMPILE=required fails the
# build rather than ship the slower pure-Python form unnoticed.
FROM python:3.11 AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY registrar/ registrar/
COPY operator/ operator/
RUN SIPREG_COMPILE=required pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# No .pyc writes at run time: pods run with a read-only root filesystem (pip compiled them at install).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/sipreg-*.whl
# A numeric, non-root user: Kubernetes' runAsNonRoot can only verify a numeric USER.
# 10001 is the runAsUser of the chart's and the operator's pod security contexts.
RUN groupadd --system --gid 10001 sipreg \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin sipreg
USER 10001:10001
WORKDIR /tmp
# SIP over UDP and TCP, SIP over TLS, HTTP (health, readiness, metrics, the bindings API);
# the operator listens on 8080 (/healthz) and 9090 (/metrics).
EXPOSE 5060/udp 5060/tcp 5061/tcp 8080/tcp 9090/tcp
ENTRYPOINT ["sipreg"]
CMD ["--help"]
